// presence-proxy portal: live updates by polling the JSON APIs (no reloads). Every
// value goes into the page as text (textContent), never as HTML.
"use strict";

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function pill(td, text, cls) {
  const span = document.createElement("span");
  span.className = "pill " + cls;
  span.textContent = text;
  td.textContent = "";
  td.appendChild(span);
}

function renderStatus(table, rows) {
  const body = table.tBodies[0];
  const fresh = document.createElement("tbody");
  for (const s of rows) {
    const tr = document.createElement("tr");
    tr.dataset.extension = s.extension;
    cell(tr, s.extension, "ext");
    cell(tr, s.email || "", "email");
    cell(tr, String(s.registered), "registered");
    pill(cell(tr, "", "call"), s.call, s.call === "connected" ? "busy" : s.call);
    cell(tr, s.dnd ? "on" : "off", "dnd");
    const teams = s.teams ? s.teams.availability + " / " + s.teams.activity : "–";
    cell(tr, teams + (s.teams_busy ? " (calls refused)" : ""), "teams");
    const pairing = s.pairing === "paired" ? "paired" : s.pairing === "needs_repairing" ? "re-pair: " + (s.pairing_reason || "") : "not paired";
    cell(tr, pairing, "paired " + (s.pairing === "paired" ? "ok" : "bad"));
    cell(tr, s.pbx_to_teams ? "on" : "off", "pbx-to-teams");
    cell(tr, s.last_error || "", "last-error bad");
    fresh.appendChild(tr);
  }
  table.replaceChild(fresh, body);
}

function renderActions(list, actions) {
  list.textContent = "";
  for (const a of actions.slice(-50).reverse()) {
    const li = document.createElement("li");
    const when = new Date(a.at_ms).toLocaleTimeString();
    li.textContent = when + "  " + a.extension + "  " + a.detail;
    list.appendChild(li);
  }
}

function renderMe(indicator, me) {
  indicator.classList.remove("green", "red");
  indicator.classList.add(me.paired ? "green" : "red");
  indicator.dataset.paired = String(me.paired);
  indicator.textContent = me.summary;
}

function renderDemo(root, demo) {
  for (const phone of demo.phones) {
    const card = root.querySelector('[data-phone="' + CSS.escape(phone.ext) + '"]');
    if (!card) continue;
    const call = card.querySelector(".call");
    if (call) call.textContent = phone.call_text;
    for (const [ext, lamp] of Object.entries(phone.lamps)) {
      const el = card.querySelector('[data-lamp="' + CSS.escape(ext) + '"]');
      if (el) { el.className = "lamp " + lamp; el.dataset.state = lamp; }
    }
  }
  for (const user of demo.users) {
    const el = root.querySelector('[data-teams="' + CSS.escape(user.ext) + '"]');
    if (el) { el.textContent = user.teams; el.dataset.state = user.teams; }
  }
}

async function poll(url, render, target, every) {
  for (;;) {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) render(target, await response.json());
    } catch (e) {
      // the proxy restarting; try again
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  if (status && status.dataset.source) poll(status.dataset.source, renderStatus, status, 1000);
  const actions = document.getElementById("actions");
  if (actions && actions.dataset.source) poll(actions.dataset.source, renderActions, actions, 2000);
  const me = document.getElementById("pairing-status");
  if (me && me.dataset.source) poll(me.dataset.source, renderMe, me, 1500);
  const demo = document.getElementById("demo");
  if (demo && demo.dataset.source) poll(demo.dataset.source, renderDemo, demo, 500);
  for (const input of document.querySelectorAll("input[type=file][data-fills]")) {
    input.addEventListener("change", async () => {
      const target = document.getElementById(input.dataset.fills);
      if (input.files.length && target) target.value = await input.files[0].text();
    });
  }
});
