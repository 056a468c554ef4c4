// Small DOM helpers shared by the views. Text always goes in through textContent: token strings are
// untrusted and must never be parsed as HTML.

/** Create `tag` with class `cls` (and text), appended to `parent` when given. */
export function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

/** A tooltip inside `root` (which must be position: relative) that follows the pointer. */
export function tooltip(root, cls = "nbi-tip") {
  const tip = el("div", cls, root);
  return {
    node: tip,
    show(evt, text) {
      tip.textContent = text;
      tip.style.display = "block";
      const box = root.getBoundingClientRect();
      tip.style.left = `${evt.clientX - box.left + 14}px`;
      tip.style.top = `${evt.clientY - box.top + 14}px`;
    },
    hide() {
      tip.style.display = "none";
    },
  };
}
