"""The one check of a class label, which is also a folder name: where it comes from does not matter.

A class label becomes a folder ``images/<dataset>/<label>/``, whether it was
typed in ``PARAMETERS.py`` (``scrape_attributes``), read from a URL list or a
queries file (step 0, the scraper), chosen in a notebook (moving an image to
another class) or found on disk (step 1). Every one of those places asks
:func:`label_problem`, so a label accepted by one step is accepted by all, and
none of them can name a folder outside the dataset, a hidden folder the image
listing would skip, or a name that Windows cannot create.
"""

from __future__ import annotations

import unicodedata

#: Characters not allowed in a folder name on Windows, macOS or Linux (``/`` and ``\`` also separate folders).
UNSAFE_CHARACTERS = frozenset('/\\<>:"|?*')
#: Longest label accepted: folder names have limits, and a label is printed in reports and plots.
MAX_LABEL_LENGTH = 100
#: Device names Windows reserves whatever the extension (``con.jpg`` is the console too).
_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                               *(f"lpt{i}" for i in range(1, 10))})


def is_hidden(name: str) -> bool:
    """True for a file or folder name the toolkit skips when it lists images (``.git``, ``.DS_Store``, ...)."""
    return name.startswith(".")


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class (folder) name, or None if it can.

    Refused: empty; ``.``/``..`` or a leading dot (parent or hidden folder);
    separators, characters invalid on Windows and control characters; a
    trailing space or dot (Windows drops them); a Windows device name
    (``CON``, ``NUL``, ``COM1``, ...); more than :data:`MAX_LABEL_LENGTH`
    characters.
    """
    if not isinstance(label, str) or not label.strip():
        return "the label is empty"
    if is_hidden(label):
        return f"label {label!r} starts with a dot (hidden or parent folder)"
    bad = sorted({c for c in label if c in UNSAFE_CHARACTERS or unicodedata.category(c) == "Cc"})
    if bad:
        return f"label {label!r} contains characters not allowed in a folder name: {' '.join(map(repr, bad))}"
    if label.endswith((" ", ".")):
        return f"label {label!r} ends with a space or a dot (not a valid folder name on Windows)"
    if label.split(".", 1)[0].strip().lower() in _WINDOWS_RESERVED:
        return f"label {label!r} is a device name reserved by Windows"
    if len(label) > MAX_LABEL_LENGTH:
        return f"label is longer than {MAX_LABEL_LENGTH} characters"
    return None
