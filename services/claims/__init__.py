"""The claims service: claims on author records, verification levels L2/L3, one owner per record."""
