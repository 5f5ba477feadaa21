"""The languages a sandbox runs, and the names clients may use for them."""

from enum import StrEnum

from executor.errors import UnsupportedLanguage


class Language(StrEnum):
    PYTHON = "python"
    JAVASCRIPT = "javascript"
    BASH = "bash"
    C = "c"
    CPP = "cpp"


_ALIASES: dict[str, Language] = {
    "python": Language.PYTHON,
    "python3": Language.PYTHON,
    "py": Language.PYTHON,
    "javascript": Language.JAVASCRIPT,
    "js": Language.JAVASCRIPT,
    "node": Language.JAVASCRIPT,
    "bash": Language.BASH,
    "sh": Language.BASH,
    "shell": Language.BASH,
    "c": Language.C,
    "cpp": Language.CPP,
    "c++": Language.CPP,
}

SUPPORTED = ", ".join(sorted(_ALIASES))


def parse_language(name: str | None) -> Language:
    """Map a client's language name (case-insensitive, aliases allowed) to a Language."""
    if name is None:
        return Language.PYTHON
    lang = _ALIASES.get(name.strip().lower())
    if lang is None:
        raise UnsupportedLanguage(
            f"Unsupported language {name!r}. Supported languages: {SUPPORTED}.", param="language"
        )
    return lang
