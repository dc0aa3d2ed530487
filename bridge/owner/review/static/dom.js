// Small DOM helpers: elements are built with textContent only (camera names, messages and
// keys come from the bucket and the server: never parsed as HTML), icons from the sprite
// in index.html.

const SVG_NS = "http://www.w3.org/2000/svg";

/** <svg class="icon"><use href="#i-name"/></svg> (the symbols are in index.html) */
export function icon(name, extra = "") {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", `icon ${extra}`.trim());
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(SVG_NS, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

/** el("span", {class: "x", text: "…", title: "…"}, child, …) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key in node && !key.includes("-")) node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

export function show(node, visible = true) {
  node.hidden = !visible;
}

let toastTimer = 0;
/** A short message at the bottom of the window. */
export function toast(text, kind = "") {
  const box = $("toast");
  box.textContent = text;
  box.className = `toast ${kind}`.trim();
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 4000);
}
