"use strict";
async function load() {
  const res = await fetch("/api/queue-health", { credentials: "same-origin" });
  if (res.status === 401) { location.href = "/login"; return; }
  const data = await res.json();
  for (const name of ["backlog", "agreement", "throughput"]) {
    const table = document.getElementById(name);
    const rows = data[name] || [];
    table.replaceChildren();
    if (!rows.length) { const tr = table.insertRow(); tr.insertCell().textContent = "nothing yet"; continue; }
    const head = table.createTHead().insertRow();
    for (const col of Object.keys(rows[0])) { const th = document.createElement("th"); th.textContent = col; head.appendChild(th); }
    const body = table.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      for (const value of Object.values(row)) tr.insertCell().textContent = value === null ? "" : String(value);
    }
  }
}
load();
setInterval(load, 15000);
