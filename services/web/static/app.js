// bzpeer web: the little JavaScript the pages use. Everything works without it (forms post
// and redirect); with it, forms stay on the page, sections update live over server-sent
// events, and the research graph is drawn with cytoscape.js (served by this site).
"use strict";

(function () {
  const profile = document.getElementById("profile");

  function setStatus(root, text, kind) {
    const el = root && root.querySelector('[data-role="status"]');
    if (!el) return;
    el.textContent = text || "";
    el.dataset.kind = kind || "";
  }

  async function postForm(form) {
    const response = await fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    let body = {};
    try {
      body = await response.json();
    } catch (e) {
      body = { message: "Unexpected answer (" + response.status + ")." };
    }
    return { status: response.status, body: body };
  }

  // --- sections ------------------------------------------------------------------------

  function replaceSection(name, html) {
    const old = document.querySelector('[data-section="' + name + '"]');
    if (!old) return;
    // Keep what a person was typing, and where the focus was.
    const values = {};
    old.querySelectorAll("textarea[id], input[id]").forEach((f) => (values[f.id] = f.value));
    const focused = document.activeElement && old.contains(document.activeElement) ? document.activeElement : null;
    const focusKey = focused && (focused.id || focused.dataset.testid || null);
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const fresh = template.content.firstElementChild;
    if (!fresh) return;
    fresh.querySelectorAll("textarea[id], input[id]").forEach((f) => {
      if (values[f.id]) f.value = values[f.id];
    });
    old.replaceWith(fresh);
    bind(fresh);
    if (focusKey) {
      const again = fresh.querySelector("#" + CSS.escape(focusKey)) ||
        fresh.querySelector('[data-testid="' + focusKey + '"]');
      if (again) again.focus();
    }
  }

  async function refresh(names) {
    const params = new URLSearchParams({ names: names.join(",") });
    if (profile.dataset.claimId) params.set("claim", profile.dataset.claimId);
    const url = "/authors/" + encodeURIComponent(profile.dataset.authorId) + "/sections?" + params;
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) throw new Error("sections: " + response.status);
    const body = await response.json();
    for (const [name, html] of Object.entries(body.sections)) replaceSection(name, html);
  }

  // Sections to read again, one request at a time (an older answer never overwrites a
  // newer one), and again after a failure (a service that did not answer in time).
  const stale = new Set();
  let refreshing = false;

  async function refreshStale() {
    if (refreshing || !profile) return;
    refreshing = true;
    let delay = 500;
    while (stale.size) {
      const names = Array.from(stale);
      stale.clear();
      try {
        await refresh(names);
        delay = 500;
      } catch (e) {
        names.forEach((n) => stale.add(n));
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 8000);
      }
    }
    refreshing = false;
  }

  function markStale(names) {
    names.forEach((n) => stale.add(n));
    refreshStale();
  }

  function liveUpdates() {
    if (!profile || !window.EventSource) return;
    const state = profile.querySelector('[data-role="live-state"]');
    const url = "/authors/" + encodeURIComponent(profile.dataset.authorId) + "/events?since=" + profile.dataset.renderedAt;
    const source = new EventSource(url);
    let connected = false;
    source.addEventListener("open", () => {
      if (!connected && state) state.textContent = "Live: this page updates by itself.";
      connected = true;
      profile.dataset.live = "open";
    });
    source.addEventListener("error", () => {
      if (state) state.textContent = "Live updates paused: reconnecting…";
      connected = false;
      profile.dataset.live = "reconnecting";
    });
    source.addEventListener("change", (event) => {
      markStale(JSON.parse(event.data).sections || []);
    });
  }

  // --- forms -----------------------------------------------------------------------------

  function bindForm(form) {
    if (form.dataset.bound) return;
    form.dataset.bound = "1";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const section = form.closest("[data-section]");
      const button = form.querySelector('button[type="submit"]');
      if (button) {
        button.disabled = true;
        button.setAttribute("aria-busy", "true");
      }
      let result;
      try {
        result = await postForm(form);
      } catch (e) {
        result = { status: 0, body: { message: "The site could not be reached. Nothing was sent." } };
      }
      const { status, body } = result;
      if (status === 401 && body.sign_in) {
        window.location.assign(body.sign_in);
        return;
      }
      const accepted = status === 202;
      setStatus(section, body.message || "", accepted ? "ok" : "problem");
      if (accepted && form.dataset.action === "claim" && body.claim_id && profile) {
        profile.dataset.claimId = body.claim_id;
      }
      if (accepted && form.dataset.action === "invite") form.reset();
      // A follow or claim stays pending until its event comes back and the section is
      // drawn again; anything else (or a refusal) can be sent again at once.
      const waitsForEvent = accepted && (form.dataset.action === "follow" || form.dataset.action === "claim");
      if (button && !waitsForEvent) {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    });
  }

  function bindMoreWorks(link) {
    if (link.dataset.bound) return;
    link.dataset.bound = "1";
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      const response = await fetch(link.href + "&fragment=1", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const body = await response.json();
      const list = link.closest("[data-section]").querySelector('[data-role="works-list"]');
      list.insertAdjacentHTML("beforeend", body.items_html);
      if (body.next_cursor) {
        const url = new URL(link.href, window.location.href);
        url.searchParams.set("cursor", body.next_cursor);
        link.href = url.pathname + url.search;
      } else {
        link.remove();
      }
    });
  }

  function bind(root) {
    root.querySelectorAll("form[data-action]").forEach(bindForm);
    root.querySelectorAll('[data-action="more-works"]').forEach(bindMoreWorks);
  }

  // --- research graph ------------------------------------------------------------------------

  // The first slice is a star around the author: rings by kind (people inside, then the
  // rest). Once expanded, a force-directed layout keeps what was there roughly in place.
  const FIRST_LAYOUT = {
    name: "concentric",
    animate: false,
    padding: 28,
    minNodeSpacing: 60,
    concentric: (n) => (n.data("expanded") ? 3 : n.data("kind") === "author" ? 2 : 1),
    levelWidth: () => 1,
  };
  const LAYOUT = { name: "cose", animate: false, randomize: false, idealEdgeLength: 90, nodeRepulsion: 90000, padding: 28 };
  const KIND_COLOURS = { author: "#1f5fa8", work: "#6b4fa0", topic: "#2f7d4f", institution: "#a0522d" };

  function graphElements(graph) {
    const nodes = graph.nodes.map((n) => ({
      group: "nodes",
      data: { id: n.id, label: n.label, kind: n.kind, weight: n.weight || 1, close: !!n.close },
    }));
    const edges = graph.edges.map((e) => ({
      group: "edges",
      data: { id: e.source + "->" + e.target + ":" + e.kind, source: e.source, target: e.target, kind: e.kind },
    }));
    return nodes.concat(edges);
  }

  function graphList(body, cy, explorer, expand) {
    const list = body.querySelector('[data-role="graph-list"]');
    if (!list) return;
    list.textContent = "";
    cy.nodes().forEach((node, i) => {
      if (i === 0) return; // the author the page is about
      const li = document.createElement("li");
      li.dataset.kind = node.data("kind");
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = node.data("kind");
      li.appendChild(kind);
      li.appendChild(document.createTextNode(" " + node.data("label")));
      if (node.data("close")) {
        const close = document.createElement("span");
        close.className = "muted";
        close.textContent = " (close collaborator)";
        li.appendChild(close);
      }
      if (explorer && (!node.data("expanded") || node.data("cursor"))) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        // A node expanded already may have more neighbours: the next page of them.
        button.textContent = node.data("expanded") ? "More" : "Expand";
        const hidden = document.createElement("span");
        hidden.className = "visually-hidden";
        hidden.textContent = " " + node.data("label");
        button.appendChild(hidden);
        button.addEventListener("click", () => expand(node));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(button);
      }
      list.appendChild(li);
    });
  }

  async function researchGraph(body) {
    const canvas = body.querySelector('[data-role="graph-canvas"]');
    const status = body.querySelector('[data-role="graph-status"]');
    const dataEl = document.getElementById("graph-data");
    if (!canvas || !dataEl) return;
    const say = (text) => {
      if (status) status.textContent = text;
    };
    if (typeof window.cytoscape !== "function") {
      say("The graph drawing library is not installed on this server; the list below names the nodes.");
      return;
    }
    let graph = JSON.parse(dataEl.textContent);
    let explorer = false;
    try {
      const response = await fetch("/authors/" + encodeURIComponent(body.dataset.authorId) + "/graph.json", {
        headers: { Accept: "application/json" },
      });
      if (response.ok) {
        const fetched = await response.json();
        explorer = !!fetched.explorer;
        graph = fetched;
      }
    } catch (e) {
      /* keep the page's own slice */
    }
    const cy = window.cytoscape({
      container: canvas,
      elements: graphElements(graph),
      style: [
        {
          selector: "node",
          style: {
            label: "data(label)",
            "font-size": 11,
            "text-valign": "bottom",
            "text-margin-y": 4,
            color: "#1b1f24",
            "text-background-color": "#ffffff",
            "text-background-opacity": 0.85,
            "text-background-padding": 2,
            "background-color": (n) => KIND_COLOURS[n.data("kind")] || "#555",
            width: (n) => 14 + Math.min(26, 2 * Math.sqrt(n.data("weight"))),
            height: (n) => 14 + Math.min(26, 2 * Math.sqrt(n.data("weight"))),
          },
        },
        { selector: "node[?close]", style: { "border-width": 3, "border-color": "#f2b705" } },
        { selector: "node[?expanded]", style: { "border-width": 3, "border-color": "#1b1f24" } },
        { selector: "edge", style: { width: 1.5, "line-color": "#c4cbd4", "curve-style": "bezier" } },
      ],
      layout: { name: "preset" },
      maxZoom: 1.6,
    });
    cy.nodes().first().data("expanded", true);
    cy.layout(FIRST_LAYOUT).run();
    window.bzpeerGraph = cy; // for the browser tests and the curious

    async function expand(node) {
      if (!explorer) {
        say("The graph explorer is not available right now: this slice shows the close collaborators and topics of the page.");
        return;
      }
      const cursor = node.data("cursor");
      if (node.data("expanded") && !cursor) return;
      say("Loading the neighbours of " + node.data("label") + "…");
      const query = cursor ? { node: node.id(), cursor: cursor } : { node: node.id() };
      const response = await fetch("/graph/neighbours?" + new URLSearchParams(query), {
        headers: { Accept: "application/json" },
      });
      if (!response.ok) {
        say("The neighbours of " + node.data("label") + " could not be loaded.");
        return;
      }
      const slice = await response.json();
      const fresh = graphElements(slice).filter((el) => cy.getElementById(el.data.id).empty());
      cy.add(fresh);
      node.data("expanded", true);
      node.data("cursor", slice.next_cursor || null);
      cy.layout(LAYOUT).run();
      const added = fresh.filter((el) => el.group === "nodes").length;
      const more = slice.next_cursor ? " More of its neighbours: its “More” button." : "";
      say("Expanded " + node.data("label") + ": " + added + " new node(s), " + cy.nodes().length + " in all." + more);
      body.dataset.expanded = String((Number(body.dataset.expanded) || 0) + 1);
      graphList(body, cy, explorer, expand);
    }

    cy.on("tap", "node", (event) => expand(event.target));
    graphList(body, cy, explorer, expand);
    body.dataset.graph = explorer ? "explorer" : "page";
    say(
      explorer
        ? cy.nodes().length + " nodes. Click a node to bring in its neighbours."
        : "The full graph explorer is not available right now: this slice shows the close collaborators and topics of the page.",
    );
  }

  function start() {
    bind(document);
    document.querySelectorAll('[data-role="graph"]').forEach((body) => {
      researchGraph(body).catch(() => {});
    });
    liveUpdates();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
