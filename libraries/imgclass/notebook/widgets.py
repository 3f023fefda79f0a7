"""The notebooks' glue: where the data is, thumbnails, and the ipywidgets browsers.

Thin by design: listing, moving with undo and reading results live in
:mod:`imgclass.data.annotations` and :mod:`imgclass.evaluation.results` (tested
there); this module only lays them out as widgets and wires buttons to them.
Each browser's actions are also plain methods (``move_selected``,
``set_filter``, ``show`` ...) so they can be driven from code and tests
without clicking.

Where the notebooks find the data (:func:`notebook_parameters`): the
parameters file (``$IMGCLASS_PARAMETERS`` or ``PARAMETERS.py``), with
``rootDir`` replaced by ``$IMGCLASS_ROOT_DIR`` and ``datasetName`` by
``$IMGCLASS_DATASET`` when those environment variables are set.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from imgclass.data import annotations as A
from imgclass.evaluation import results as R
from imgclass.io.images import UnreadableImageError, load_rgb
from imgclass.errors import ImgClassError
from imgclass.parameters import Parameters, find_parameters_file, load_parameters

#: Environment variables that point the notebooks at another data root / dataset.
ROOT_DIR_ENV = "IMGCLASS_ROOT_DIR"
DATASET_ENV = "IMGCLASS_DATASET"
RIGHT_COLOR, WRONG_COLOR, OTHER_COLOR = "#1a9641", "#d7191c", "#9e9e9e"


def notebook_parameters(environ: Mapping[str, str] | None = None) -> Parameters:
    """The parameters a notebook uses: the parameters file, then ``$IMGCLASS_ROOT_DIR`` / ``$IMGCLASS_DATASET``.

    A relative ``$IMGCLASS_ROOT_DIR`` is taken relative to the current folder.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if environ.get(ROOT_DIR_ENV):
        values["rootDir"] = str(Path(environ[ROOT_DIR_ENV]).expanduser().resolve())
    if environ.get(DATASET_ENV):
        values["datasetName"] = environ[DATASET_ENV]
    try:  # the notebooks live in the project: its resources/ (demo images) are theirs
        project_dir = find_parameters_file().parent
    except ImgClassError:
        project_dir = None
    return load_parameters(project_dir=project_dir, **values)


# --------------------------------------------------------------------------- pictures as bytes
def thumbnail_jpeg(path: str | os.PathLike[str], side: int = 128) -> bytes:
    """A JPEG of the image shrunk to at most ``side`` pixels; a grey tile if it cannot be decoded."""
    try:
        image = load_rgb(path, draft_size=(side, side))
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    except UnreadableImageError:
        image = Image.new("RGB", (side, side), (189, 189, 189))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def score_chart_png(scores: pd.Series, true_label: str | None = None, width: float = 4.5) -> bytes:
    """A horizontal bar chart of one image's per-class scores (PNG bytes).

    The best class is green if it is ``true_label`` and red otherwise; the true
    class's name is shown in bold.
    """
    fig = Figure(figsize=(width, 0.35 * len(scores) + 0.8), dpi=100)
    ax = fig.add_subplot()
    best = scores.idxmax()
    colors = [(RIGHT_COLOR if label == true_label else WRONG_COLOR) if label == best else OTHER_COLOR
              for label in scores.index]
    positions = range(len(scores))[::-1]
    ax.barh(list(positions), scores.to_numpy(), color=colors)
    ax.set_yticks(list(positions), [str(label) for label in scores.index])
    for tick, label in zip(ax.get_yticklabels(), scores.index):
        if label == true_label:
            tick.set_fontweight("bold")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("score")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _image_widget(value: bytes, side: int, format: str = "jpeg") -> widgets.Image:
    """An image in a fixed ``side`` x ``side`` box (aspect kept), so grid rows line up."""
    return widgets.Image(value=value, format=format,
                         layout=widgets.Layout(width=f"{side}px", height=f"{side}px", object_fit="contain"))


def image_grid(paths: Sequence[str | os.PathLike[str]], captions: Sequence[str], side: int = 160,
               columns: int = 5) -> widgets.GridBox:
    """Thumbnails with an HTML caption under each, ``columns`` per row."""
    tiles = [widgets.VBox([_image_widget(thumbnail_jpeg(p, side), side),
                           widgets.HTML(caption, layout=widgets.Layout(width=f"{side}px"))])
             for p, caption in zip(paths, captions)]
    return widgets.GridBox(tiles, layout=widgets.Layout(grid_template_columns=f"repeat({columns}, {side + 16}px)"))


def _button(description: str, on_click: Callable[[], Any], style: str = "", tooltip: str = "") -> widgets.Button:
    button = widgets.Button(description=description, button_style=style, tooltip=tooltip)
    button.on_click(lambda _: on_click())
    return button


# --------------------------------------------------------------------------- showImages
class DatasetBrowser:
    """Browse ``images/<ds>/`` class by class and correct labels (move / exclude / undo).

    ``browser.widget`` is what the notebook displays. Tick images in the grid,
    pick a class and press *Move*, or press *Exclude*; *Undo last* / *Undo all*
    put files back. Every change is logged in ``images/<ds>_annotations.csv``
    (see :mod:`imgclass.data.annotations`).
    """

    def __init__(self, images_dir: str | os.PathLike[str], page_size: int = 24, thumbnail_side: int = 128,
                 columns: int = 6):
        self.images_dir = Path(images_dir)
        self.page_size = page_size
        self.thumbnail_side = thumbnail_side
        self.page = 0
        self._label: str | None = None
        self._thumbnails: dict[tuple[str, int], bytes] = {}
        self._boxes: dict[str, widgets.Checkbox] = {}

        self.counts = widgets.HTML()
        self.class_picker = widgets.Dropdown(description="class")
        self._quiet = False
        self.class_picker.observe(lambda _: None if self._quiet else self.show(self.class_picker.value, 0),
                                  names="value")
        self.page_label = widgets.Label()
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat({columns}, {thumbnail_side + 16}px)"))
        self.target_picker = widgets.Dropdown(description="move to")
        self.status = widgets.HTML()
        navigation = widgets.HBox([self.class_picker, _button("\u25c0 previous", lambda: self.turn(-1)),
                                   _button("next \u25b6", lambda: self.turn(+1)), self.page_label])
        actions = widgets.HBox([
            self.target_picker,
            _button("Move selected", lambda: self._report(self.move_selected(self.target_picker.value)),
                    "primary", "move the ticked images into the chosen class folder"),
            _button("Exclude selected", lambda: self._report(self.exclude_selected()), "warning",
                    "move the ticked images out of the dataset (to images/<ds>_excluded/)"),
            _button("Undo last", lambda: self._report(self.undo_last())),
            _button("Undo all", lambda: self._report(self.undo_all())),
        ])
        self.widget = widgets.VBox([self.counts, navigation, self.grid, actions, self.status])
        self.refresh()

    # ----- state shown
    @property
    def classes(self) -> list[A.ClassImages]:
        return A.list_classes(self.images_dir)

    @property
    def label(self) -> str | None:
        """The class shown."""
        return self._label

    def refresh(self) -> None:
        """Re-read the folders: counts, class lists, the current page."""
        classes = self.classes
        rows = "".join(f"<tr><td>{html.escape(c.label)}</td><td style='text-align:right'>{c.count}</td></tr>"
                       for c in classes)
        total = sum(c.count for c in classes)
        excluded = len(A.list_excluded(self.images_dir))
        pending = len(A.pending_changes(self.images_dir))
        self.counts.value = (f"<b>{html.escape(str(self.images_dir))}</b>: {total} images in {len(classes)} "
                             f"classes; {excluded} excluded; {pending} change(s) that can be undone"
                             f"<table><tr><th>class</th><th>images</th></tr>{rows}</table>")
        labels = [c.label for c in classes]
        current = self.class_picker.value if self.class_picker.value in labels else (labels[0] if labels else None)
        self._quiet = True  # new options reset the value: do not redraw the grid for that
        try:
            self.class_picker.options = [(f"{c.label} ({c.count})", c.label) for c in classes]
            self.class_picker.value = current
        finally:
            self._quiet = False
        target = self.target_picker.value
        self.target_picker.options = labels
        self.target_picker.value = target if target in labels else None  # no default: a move is a choice
        self.show(current, self.page)

    def paths(self, label: str | None = None) -> list[str]:
        """Images of ``label`` (default: the class shown)."""
        label = label or self.label
        return A.image_paths(self.images_dir, label) if label else []

    def show(self, label: str | None, page: int = 0) -> None:
        """Show one page of a class's thumbnails (nothing ticked)."""
        self._label = label
        if label is not None and self.class_picker.value != label:
            self._quiet = True
            try:
                self.class_picker.value = label
            finally:
                self._quiet = False
        paths = self.paths(label) if label else []
        pages = max(1, -(-len(paths) // self.page_size))
        self.page = min(max(0, page), pages - 1)
        start = self.page * self.page_size
        shown = paths[start:start + self.page_size]
        self._boxes = {p: widgets.Checkbox(value=False, description=Path(p).name, indent=False,
                                           layout=widgets.Layout(width=f"{self.thumbnail_side}px"))
                       for p in shown}
        self.grid.children = [widgets.VBox([_image_widget(self._thumbnail(p), self.thumbnail_side), self._boxes[p]])
                              for p in shown]
        self.page_label.value = (f"images {start + 1}-{start + len(shown)} of {len(paths)}, page "
                                 f"{self.page + 1}/{pages}" if paths else "no images")

    def turn(self, step: int) -> None:
        self.show(self.label, self.page + step)

    def _thumbnail(self, relative_path: str) -> bytes:
        path = self.images_dir / relative_path
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._thumbnails:
            self._thumbnails[key] = thumbnail_jpeg(path, self.thumbnail_side)
        return self._thumbnails[key]

    # ----- actions
    def selected(self) -> list[str]:
        """The ticked images of the page shown."""
        return [p for p, box in self._boxes.items() if box.value]

    def select(self, paths: Sequence[str]) -> None:
        """Tick these images (of the page shown)."""
        for p in paths:
            self._boxes[p].value = True

    def _apply_to_selected(self, verb: str, change: Callable[[str], A.Change]) -> list[str]:
        """Apply ``change`` to every ticked image; one message per image (an error does not stop the others)."""
        messages = []
        for path in self.selected():
            try:
                messages.append(f"{verb} {path} -> {change(path).target}")
            except A.AnnotationError as exc:
                messages.append(f"error: {exc}")
        self.refresh()
        return messages or ["nothing ticked"]

    def move_selected(self, new_label: str | None) -> list[str]:
        if not new_label:
            return ["choose a class in 'move to' first"]
        return self._apply_to_selected("moved", lambda path: A.move_image(self.images_dir, path, new_label))

    def exclude_selected(self) -> list[str]:
        return self._apply_to_selected("excluded", lambda path: A.exclude_image(self.images_dir, path))

    def undo_last(self) -> list[str]:
        try:
            change = A.undo_last(self.images_dir)
            message = f"restored {change.target}" if change else "nothing to undo"
        except A.AnnotationError as exc:
            message = f"error: {exc}"
        self.refresh()
        return [message]

    def undo_all(self) -> list[str]:
        result = A.undo_all(self.images_dir)
        self.refresh()
        return result.summary().splitlines()

    def _report(self, messages: list[str]) -> None:
        self.status.value = "<br>".join(html.escape(m) for m in messages)


# --------------------------------------------------------------------------- showResults
class ResultsBrowser:
    """Scroll through the test images with their scores, filtered by class and by right/wrong.

    ``browser.widget`` is what the notebook displays; :meth:`set_filter` and
    :meth:`show` do what the controls do.
    """

    OUTCOMES = {"all": None, "right": True, "wrong": False}
    ORDERS = ("file", "least sure")

    def __init__(self, results: R.Results, image_side: int = 256):
        self.results = results
        self.image_side = image_side
        self.rows = results.predictions
        self.class_picker = widgets.Dropdown(options=["all"] + list(results.labels), description="class")
        compact = {"button_width": "90px", "description_width": "60px"}
        self.outcome_picker = widgets.ToggleButtons(options=list(self.OUTCOMES), description="outcome", style=compact)
        self.order_picker = widgets.ToggleButtons(options=list(self.ORDERS), description="order", style=compact)
        self.slider = widgets.IntSlider(min=0, max=0, description="image", continuous_update=False)
        self.count_label = widgets.Label()
        self.image = _image_widget(b"", image_side)
        self.chart = widgets.Image(format="png")
        self.caption = widgets.HTML()
        for picker in (self.class_picker, self.outcome_picker, self.order_picker):
            picker.observe(lambda _: self._apply_controls(), names="value")
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        navigation = widgets.HBox([_button("\u25c0", lambda: self.show(self.slider.value - 1)), self.slider,
                                   _button("\u25b6", lambda: self.show(self.slider.value + 1)), self.count_label])
        self.widget = widgets.VBox([widgets.HBox([self.class_picker, self.outcome_picker, self.order_picker]),
                                    navigation, widgets.HBox([self.image, widgets.VBox([self.caption, self.chart])])])
        self._apply_controls()

    def _apply_controls(self) -> None:
        label = None if self.class_picker.value == "all" else self.class_picker.value
        self.set_filter(label, self.OUTCOMES[self.outcome_picker.value], self.order_picker.value)

    def set_filter(self, label: str | None = None, correct: bool | None = None, order: str = "file") -> None:
        """Keep the images of class ``label`` (None = all) that were right/wrong (None = both)."""
        rows = R.filter_predictions(self.results.predictions, label=label, correct=correct)
        self.rows = R.least_sure(rows, n=None) if order == "least sure" else rows.sort_values("path")
        self.count_label.value = f"{len(self.rows)} test image(s)"
        with self.slider.hold_trait_notifications():
            self.slider.max = max(0, len(self.rows) - 1)
            self.slider.value = 0
        self.show(0)

    @property
    def current(self) -> pd.Series | None:
        """The row shown (None when the filter leaves nothing)."""
        return None if self.rows.empty else self.rows.iloc[self.slider.value]

    def show(self, index: int) -> None:
        """Show the ``index``-th image of the filtered list (clamped to the list)."""
        if self.rows.empty:
            self.image.value, self.chart.value = b"", b""
            self.caption.value = "<i>no test image matches this filter</i>"
            return
        index = min(max(0, index), len(self.rows) - 1)
        if self.slider.value != index:
            self.slider.value = index  # observing the slider calls show() again
            return
        row = self.rows.iloc[index]
        color = RIGHT_COLOR if row["correct"] else WRONG_COLOR
        self.image.value = thumbnail_jpeg(row["image"], self.image_side)
        self.chart.value = score_chart_png(R.score_vector(self.rows, row["path"]), row["label"])
        self.caption.value = (f"<b>{html.escape(row['path'])}</b><br>true class: <b>{html.escape(row['label'])}</b>"
                              f"<br>predicted: <b style='color:{color}'>{html.escape(row['predicted'])}</b> "
                              f"(score {row['score']:.3f})<br>runner-up: {html.escape(row['runner_up'])}, "
                              f"margin {row['margin']:.3f}")


def least_sure_grid(results: R.Results, n: int = 10, by: str = "margin", side: int = 160,
                    columns: int = 5) -> widgets.GridBox:
    """Thumbnails of the ``n`` least-sure test images with true / predicted class and margin."""
    rows = R.least_sure(results.predictions, n, by)
    captions = [f"<span style='color:{RIGHT_COLOR if r.correct else WRONG_COLOR}'>{html.escape(r.predicted)}</span>"
                f" (true: {html.escape(r.label)})<br>vs {html.escape(r.runner_up)}, margin {r.margin:.3f}"
                for r in rows.itertuples()]
    return image_grid(list(rows["image"]), captions, side, columns)


__all__ = ["DATASET_ENV", "DatasetBrowser", "ROOT_DIR_ENV", "ResultsBrowser", "image_grid", "least_sure_grid",
           "notebook_parameters", "score_chart_png", "thumbnail_jpeg"]
