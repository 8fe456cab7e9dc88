"""The scenario's ``sites`` section: clients that each bring their own data.

Without it the server's plan says which client learns which of the dataset's samples
when, and every node holds the same dataset. With it each client is a site with a
folder of its own (:mod:`fedrecon.data.sites`: ``train/<class>/<image>`` or
``train.csv``/``train.jsonl``, and an optional test part). The server never sees or
indexes a site's samples: each round a site learns what it holds and has not learned
yet (files or rows added since are the next task), classes are matched across sites
by their names, and accuracy is what the sites count on their own test parts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fedrecon.scenario.base import Strict


class SitesConfig(Strict):
    """Each client's data is its own: where it is, how its samples are read, which
    class names may occur, and how many rounds the federation runs."""

    folders: list[str] = Field(
        default_factory=list,
        description="the site folder of each client, in client order (relative to the scenario file); a "
                    "deployed SuperNode's node config site-folder=PATH takes precedence; empty: every node must "
                    "name its own")
    read: Literal["ink", "rgb", "text"] = Field(
        description="what a site's samples are: ink (drawings, Omniglot-style: black on white, one channel), rgb "
                    "(photos: RGB, resized), text (rows of a CSV or JSONL file)")
    image_size: int = Field(28, ge=8, le=1024, description="images: side of the square an image is resized to")
    text_column: str = Field("text", min_length=1, description="text: the column (or JSON key) holding the sentence")
    label_column: str = Field("label", min_length=1, description="text: the column (or JSON key) holding the class name")
    classes: list[str] | None = Field(
        None, description="the class names sites may hold (the vocabulary), fixing each class's slot; required "
                          "under secure aggregation, where the server must learn only sums, not which site holds "
                          "which class; null: any name, and the server learns each site's names and counts")
    every_s: float = Field(0.0, ge=0.0, description="seconds from one round's start to the next's at least (data "
                                                    "arrives between rounds; 0: no wait)")

    @field_validator("classes")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        if not names:
            raise ValueError("an empty vocabulary: name at least one class, or null")
        blank = [n for n in names if not n.strip()]
        if blank:
            raise ValueError("a class name must not be empty")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"class names must be distinct: {', '.join(twice[:3])} more than once")
        return names

    def preprocessing(self) -> dict:
        """How a site's raw sample becomes the backbone's input: the exported model's
        ``preprocessing`` entry (:mod:`fedrecon.model.inputs`), so a node's model reads
        an input exactly as its site's samples were read."""
        return {"kind": self.read, **({"image_size": self.image_size} if self.read != "text" else {})}

    @property
    def modality(self) -> str:
        return "text" if self.read == "text" else "image"
