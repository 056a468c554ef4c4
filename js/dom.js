// Small DOM helpers shared by the views. Text always goes in through textContent: token strings are
// untrusted and must never be parsed as HTML.

const CONTROLS = new Set(["input", "select", "textarea"]);

/** Create `tag` with class `cls` (and text), appended to `parent` when given. */
export function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  // Keys pressed in a control are the control's: JupyterLab's shortcuts listen on the document and
  // cancelled the arrow keys, so a focused slider never moved with the keyboard (other keys would
  // reach the notebook's shortcuts as well).
  if (CONTROLS.has(tag)) e.addEventListener("keydown", (evt) => evt.stopPropagation());
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
