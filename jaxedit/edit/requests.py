"""Edit requests: the (prompt, subject, target) triple every editing method takes (Meng et al., 2022, §3:
a request `(s, r, o*)` rewrites the object of subject `s` under relation `r`, written as a prompt with `{}`
where the subject goes), read from `Request` values, dicts or CounterFact records.
"""

from __future__ import annotations

import dataclasses
import re
import string

from jaxedit.errors import InputError


@dataclasses.dataclass(frozen=True)
class Request:
    """An edit: `prompt` holds `{}` where the subject goes; `target` is the new object."""

    prompt: str
    subject: str
    target: str

    @property
    def text(self) -> str:
        return self.prompt.format(self.subject)

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def as_request(value: Request | dict) -> Request:
    """A `Request` from itself, a dict with prompt / subject / target, or a CounterFact record.

    The prompt holds `{}` where the subject goes, or the subject itself (its first occurrence is used).
    """
    if isinstance(value, Request):
        request = value
    else:
        record = value.get("requested_rewrite", value)
        target = record.get("target", record.get("target_new"))
        if isinstance(target, dict):
            target = target.get("str")
        request = Request(
            prompt=record.get("prompt", ""), subject=record.get("subject", ""), target=target or ""
        )
    for name in ("prompt", "subject", "target"):
        if not isinstance(getattr(request, name), str):
            raise InputError(f"edit request {name} must be a string, got {getattr(request, name)!r}")
    if not request.target.strip():
        raise InputError(f"edit request has an empty target: {request}")
    if not request.subject.strip():
        raise InputError(f"edit request has an empty subject: {request}")
    if "{}" not in request.prompt:  # the subject written out: mark its first occurrence
        if request.subject not in request.prompt:
            raise InputError(f"subject {request.subject!r} does not occur in prompt {request.prompt!r}")
        request = dataclasses.replace(request, prompt=request.prompt.replace(request.subject, "{}", 1))
    if request.prompt.count("{}") != 1 or any(b in request.prompt.replace("{}", "") for b in "{}"):
        others = [f for f in _placeholders(request.prompt.replace("{}", "", 1)) if f]
        shown = f" (it also holds {', '.join(others)})" if others else ""
        raise InputError(
            f"edit prompt must hold exactly one '{{}}' where the subject goes and no other brace, got "
            f"{request.prompt!r}{shown}"
        )
    return request


def _placeholders(text: str) -> list[str]:
    """The `{...}` groups of a text, for error messages."""
    return re.findall(r"\{[^{}]*\}", text)


def template_fields(template: str) -> list[str]:
    """The placeholders of a `str.format` template in order (`""` for `{}`); `InputError` if it is not a
    valid template (an unmatched brace)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputError(
            f"{template!r} is not a valid template ({err}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is not None:
            fields.append(name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else ""))
    return fields
