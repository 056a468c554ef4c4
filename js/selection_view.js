// Selection displayed on its own: one line of text saying what is selected (handy when debugging links).
function render({ model, el }) {
  const line = document.createElement("code");
  const show = () => {
    const t = model.get("token");
    const n = model.get("neuron");
    line.textContent = `token ${t < 0 ? "—" : t} · layer ${model.get("layer")} · head ${model.get("head")} · neuron ${n < 0 ? "—" : n}`;
  };
  model.on("change", show);
  show();
  el.appendChild(line);
  return () => model.off("change", show);
}
export default { render };
