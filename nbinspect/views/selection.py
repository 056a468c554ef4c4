"""Selection: the one shared answer to "which token, layer, head and neuron are we looking at?".

Every view holds a Selection (its own, or one passed in to link it to others). In the browser the views
read and write the same widget model, so a click in one view repaints the others at once, without a
kernel round trip; Python sees every change (read, set, observe) as ordinary traits.
"""

from __future__ import annotations

import anywidget
import ipywidgets
import traitlets

from ._bundle import bundle


class Selection(anywidget.AnyWidget):
    """Current token, layer, head and neuron, shared by linked views (-1: nothing selected).

    The bounds (``n_tokens``, ``n_layers``, ``n_heads``, ``n_neurons``) are set by the first view that
    links to it, so an out-of-range value is refused with a message before any view sees it.
    """

    _esm = bundle("selection_view")

    token = traitlets.Int(-1).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    neuron = traitlets.Int(-1).tag(sync=True)
    n_tokens = traitlets.Int(0).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    n_neurons = traitlets.Int(0).tag(sync=True)

    def _check(self, name: str, value: int, size: int, none_ok: bool) -> int:
        low = -1 if none_ok else 0
        if size and not low <= value < size:
            extra = " (-1 for none)" if none_ok else ""
            raise traitlets.TraitError(f"{name} {value} is out of range: expected 0..{size - 1}{extra}.")
        if value < low:
            raise traitlets.TraitError(f"{name} {value} is out of range: expected a value >= {low}.")
        return value

    @traitlets.validate("token")
    def _valid_token(self, p):
        return self._check("token", p["value"], self.n_tokens, True)

    @traitlets.validate("layer")
    def _valid_layer(self, p):
        value = p["value"]
        if self.n_layers and -self.n_layers <= value < 0:  # Python-style negative index
            value += self.n_layers
        return self._check("layer", value, self.n_layers, False)

    @traitlets.validate("head")
    def _valid_head(self, p):
        return self._check("head", p["value"], self.n_heads, False)

    @traitlets.validate("neuron")
    def _valid_neuron(self, p):
        return self._check("neuron", p["value"], self.n_neurons, True)

    def bound_to(self, **sizes: int) -> Selection:
        """Record the sizes of what the views show; a second view of another shape is refused."""
        for name, size in sizes.items():
            current = getattr(self, name)
            if current and size and current != size:
                raise ValueError(
                    f"this Selection is linked to views with {name}={current}, but the new view has {size}; "
                    "link views of the same model and text only."
                )
        with self.hold_trait_notifications():
            for name, size in sizes.items():
                if size:
                    setattr(self, name, size)
        return self

    def __repr__(self) -> str:
        return f"Selection(token={self.token}, layer={self.layer}, head={self.head}, neuron={self.neuron})"


def link_focus(view, selection: Selection, names: tuple[str, ...]) -> None:
    """Keep ``view.<name>`` and ``selection.<name>`` equal (both ways) for each name."""
    for name in names:
        traitlets.link((selection, name), (view, name))


class LinkedView(anywidget.AnyWidget):
    """What every view of one text shares: its tokens, a shared :class:`Selection` and the mirrored
    ``layer`` and ``token`` traits, checked against the model before they reach the selection.

    Subclasses set ``self._adapter`` before calling ``__init__`` and call :meth:`_link` with the
    names they mirror.
    """

    #: Token texts, drawn as text on a canvas (never parsed as HTML).
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    #: The shared selection; the browser reads and writes layer, token (and more) there (js/selection.js).
    selection = traitlets.Instance(Selection).tag(sync=True, **ipywidgets.widget_serialization)
    #: Mirrored from ``selection`` both ways: clicks and hovers in the browser set them, setting them moves the views.
    layer = traitlets.Int(0)
    token = traitlets.Int(-1)
    #: Counted by the browser on its copy of the model after it paints (tests and saved pages read it there). Not
    #: sent back to Python, where it stays as it was: a message per paint cost the kernel and the page a round
    #: trip on every slider edit.
    painted = traitlets.Int(0).tag(sync=True)

    def _link(self, names: tuple[str, ...]) -> None:
        link_focus(self, self.selection, names)

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        try:
            return self._adapter.check_layer(proposal["value"])
        except IndexError as e:
            raise traitlets.TraitError(str(e)) from None

    @traitlets.validate("token")
    def _valid_token(self, proposal):
        value = proposal["value"]
        if not -1 <= value < len(self.tokens):
            raise traitlets.TraitError(f"token {value} is out of range: the text has tokens 0..{len(self.tokens) - 1} (-1 for none).")
        return value
