"""What text the service can take: the one rule the API, the CLI and gold files share."""

from __future__ import annotations


def storable(value: str, what: str = "text") -> str:
    """`value` if the tokenizer and both stores can take it, else ValueError saying why and
    where."""
    # A lone surrogate (a JSON escape such as "\ud800" with no partner) is not Unicode
    # text: no tokenizer nor database takes it.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode: a lone surrogate (U+{ord(value[exc.start]):04X}) "
            f"at character {exc.start}"
        ) from None
    # PostgreSQL text cannot hold NUL; refusing it everywhere keeps both stores alike.
    if "\x00" in value:
        raise ValueError(
            f"{what} must not contain the NUL character (U+0000), found at character "
            f"{value.index(chr(0))}"
        )
    return value
