"""The web app: profile pages over the services' HTTP APIs (services/web/README.md)."""
