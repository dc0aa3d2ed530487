// Trust made visible: what `obscura clips verify` found, per bridge (/api/status). A green
// "verified up to <time>" when the manifest checks out; a red banner per kind of problem,
// said plainly first, the verifier's own message after it (docs/review.md §5).

import { $, el, icon } from "./dom.js";
import { count, when } from "./format.js";

/** kind (crypto/manifest_verify.py, bridge/owner/review/media.py) -> what it means. */
const SENTENCES = {
  forged: "An object in the bucket was not recorded by your bridge (forged).",
  swapped: "A clip in the bucket was replaced or altered (swapped).",
  missing: "A clip the manifest lists was deleted from the bucket.",
  deleted: "A clip the manifest lists was deleted from the bucket.",
  truncated: "A clip in the bucket was cut short (truncated).",
  rollback: "The manifest was rolled back to an older version: newer clips may be hidden.",
  recipients: "The recipients that new clips are encrypted to have changed.",
  fork: "The manifest has two different histories (forked): someone rewrote it.",
  head: "The manifest's head is missing or does not verify.",
  signature: "A part of the manifest carries a bad signature.",
  segment: "A part of the manifest is missing or unreadable.",
  key: "The bridge's signing key is not the one you pinned.",
  frozen: "The bridge has stopped updating the manifest: newer clips may be withheld.",
  gone: "Every object of a bridge you verified before is gone from the bucket.",
  share: "The manifest records a share of a clip it has no record of.",
  undecryptable: "A clip cannot be decrypted with this key.",
};
const GENERIC = "The manifest does not verify.";
const SHOWN_PER_KIND = 4;

export const sentence = (kind) => SENTENCES[kind] || GENERIC;

function pill(bridge, many) {
  const who = many ? ` · bridge ${bridge.bridge_id.slice(0, 8)}` : "";
  const title = `bridge ${bridge.bridge_id}, manifest seq ${bridge.seq ?? "–"}`;
  if (bridge.not_recipient) {
    return el("span", { class: "pill muted", title },
      icon("key"), el("span", { text: `Not a recipient${who}` }));
  }
  if (bridge.ok && bridge.verified_up_to_ms) {
    return el("span", { class: "pill ok", title, "data-bridge": bridge.bridge_id },
      icon("shield-check"),
      el("span", { text: `Verified up to ${when(bridge.verified_up_to_ms)}${who}` }));
  }
  const n = bridge.problems.length + bridge.warnings.length;
  return el("span", { class: "pill bad", title },
    icon("shield-alert"), el("span", { text: `${count(n, "problem")}${who}` }));
}

function banner(bridge, kind, items, many) {
  const list = el("ul", { class: "banner-list" });
  for (const item of items.slice(0, SHOWN_PER_KIND)) {
    list.append(el("li", { text: item }));
  }
  if (items.length > SHOWN_PER_KIND) {
    list.append(el("li", { class: "more-items", text: `and ${items.length - SHOWN_PER_KIND} more` }));
  }
  const where = many ? ` (bridge ${bridge.bridge_id})` : "";
  return el("div", { class: "banner bad", role: "alert", "data-kind": kind },
    icon("alert", "banner-icon"),
    el("div", { class: "banner-body" },
      el("p", { class: "banner-title", text: sentence(kind) + where }),
      list));
}

let shown = "";

/** Renders the pills in the top bar and the banners under it (again only when the verdict
 *  changed: a banner is an alert, read out each time it is made); returns the problems. */
export function renderTrust(status) {
  const bridges = status.bridges || [];
  const problems = bridges.flatMap((b) => b.problems);
  const key = JSON.stringify(bridges);
  if (key === shown) return problems;
  shown = key;
  const many = bridges.length > 1;
  $("trust").replaceChildren(...bridges.map((b) => pill(b, many)));
  const banners = [];
  for (const b of bridges) {
    // A bridge this key cannot open: its head "does not verify" only because it cannot be
    // decrypted; the grey pill (or the page's message) says what that means instead.
    if (b.not_recipient) continue;
    const byKind = new Map();
    for (const p of b.problems) {
      if (!byKind.has(p.kind)) byKind.set(p.kind, []);
      byKind.get(p.kind).push(p.message);
    }
    if (b.warnings.length) byKind.set("recipients", [...b.warnings]);
    for (const [kind, messages] of byKind) banners.push(banner(b, kind, messages, many));
  }
  const notices = bridges.flatMap((b) => b.notices || []);
  if (notices.length) {
    const details = el("details", { class: "notices" },
      el("summary", {}, icon("info"), el("span", { text: "How this was verified" })),
      el("ul", {}, ...notices.map((n) => el("li", { text: n }))));
    banners.push(details);
  }
  $("banners").replaceChildren(...banners);
  return problems;
}
