"""Class-map YAML: source dataset classes -> product waste categories -> bin compartments."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

logger = logging.getLogger(__name__)

DROP_WORDS = frozenset({"drop", "none", "null", ""})


class ClassMapError(ValueError):
    """The class map is invalid or does not cover a dataset."""


class Category(BaseModel):
    """One product waste category (= one detector class)."""

    model_config = ConfigDict(extra="forbid")

    compartment: str
    description: str = ""


class ClassRule(BaseModel):
    """Where one source class goes, and why."""

    model_config = ConfigDict(extra="forbid")

    category: str | None
    reason: str = ""

    @property
    def dropped(self) -> bool:
        """True when the class is dropped."""
        return self.category is None or self.category.strip().lower() in DROP_WORDS


class DatasetSpec(BaseModel):
    """One source dataset: attribution and its class rules."""

    model_config = ConfigDict(extra="forbid")

    title: str
    author: str
    url: str
    version: str = ""
    license: str
    classes: dict[str, ClassRule | str | None]

    def rule(self, name: str) -> ClassRule:
        """Return the rule for a source class (short forms normalised)."""
        value = self.classes[name]
        if isinstance(value, ClassRule):
            return value
        return ClassRule(category=value)

    def attribution(self) -> str:
        """One-line CC attribution for this dataset."""
        version = f" ({self.version})" if self.version else ""
        return f'"{self.title}" by {self.author}, {self.url}{version}, licensed {self.license}'


class ClassMap(BaseModel):
    """The whole class-map file."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    compartments: dict[str, str]
    categories: dict[str, Category] = Field(min_length=1)
    datasets: dict[str, DatasetSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_references(self) -> ClassMap:
        """Every compartment and category reference must exist."""
        for name, cat in self.categories.items():
            if cat.compartment not in self.compartments:
                raise ValueError(
                    f"category {name!r} uses unknown compartment {cat.compartment!r} "
                    f"(known: {', '.join(self.compartments)})"
                )
        for ds_name, ds in self.datasets.items():
            for cls_name in ds.classes:
                rule = ds.rule(cls_name)
                if not rule.dropped and rule.category not in self.categories:
                    raise ValueError(
                        f"dataset {ds_name!r} class {cls_name!r} maps to unknown category "
                        f"{rule.category!r} (known: {', '.join(self.categories)}; use null to drop)"
                    )
        return self

    @property
    def category_names(self) -> list[str]:
        """Detector class names in index order."""
        return list(self.categories)

    def category_index(self, category: str) -> int:
        """Detector class index of a category."""
        return self.category_names.index(category)

    def resolve(self, dataset: str, class_names: Sequence[str]) -> list[int | None]:
        """Map a dataset's class list to category indices (None = dropped); raise on gaps."""
        if dataset not in self.datasets:
            raise ClassMapError(
                f"dataset {dataset!r} is not in the class map (known: {', '.join(self.datasets)}); "
                f"add a datasets.{dataset} section"
            )
        spec = self.datasets[dataset]
        missing = [name for name in class_names if name not in spec.classes]
        if missing:
            raise ClassMapError(
                f"dataset {dataset!r}: class(es) {', '.join(repr(m) for m in missing)} not covered by the class "
                f"map; add them under datasets.{dataset}.classes with a category or null to drop"
            )
        unused = sorted(set(spec.classes) - set(class_names))
        if unused:
            logger.warning("dataset %s: class map lists classes the dataset lacks: %s", dataset, unused)
        result: list[int | None] = []
        for name in class_names:
            rule = spec.rule(name)
            result.append(None if rule.dropped else self.category_index(str(rule.category)))
        return result


def load_classmap(path: Path) -> ClassMap:
    """Load and validate a class-map YAML file, raising ClassMapError with a readable message."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClassMapError(f"cannot read class map {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ClassMapError(f"class map {path} must be a mapping")
    try:
        return ClassMap.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise ClassMapError(f"invalid class map {path}:\n" + "\n".join(lines)) from exc
