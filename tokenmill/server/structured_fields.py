"""A request's output constraint from the fields OpenAI and vLLM clients send: `response_format`
(json_object, json_schema), vLLM's `structured_outputs` object, and its older `guided_json`,
`guided_regex`, `guided_choice` and `guided_grammar` fields. At most one may be given."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tokenmill.server.errors import bad_request
from tokenmill.structured.params import StructuredOutputsError, StructuredOutputsParams


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    json_schema: JsonSchemaFormat | None = None


class StructuredFields(BaseModel):
    """Mixed into both request bodies."""

    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def output_constraint(self) -> tuple[StructuredOutputsParams, str] | None:
        """The constraint and the field it came from, or None for free text; a 400 if malformed."""
        given = [name for name in ("response_format", "structured_outputs", "guided_json", "guided_regex",
                                   "guided_choice", "guided_grammar")
                 if getattr(self, name) is not None and not _is_text(name, getattr(self, name))]  # fmt: skip
        if not given:
            return None
        if len(given) > 1:
            raise bad_request(f"give at most one output constraint; got {', '.join(given)}", given[1])
        field = given[0]
        try:
            return _params(self, field), field
        except StructuredOutputsError as exc:
            raise bad_request(str(exc), field) from exc
        except TypeError as exc:  # a structured_outputs value of the wrong type
            raise bad_request(f"{field}: {exc}", field) from exc


def _is_text(name: str, value: Any) -> bool:
    return name == "response_format" and value.type == "text"


def _params(fields: StructuredFields, field: str) -> StructuredOutputsParams:
    if field == "response_format":
        response_format = fields.response_format
        if response_format.type == "json_object":
            return StructuredOutputsParams(json_object=True)
        if response_format.type != "json_schema":
            raise StructuredOutputsError(field, f"response_format type must be text, json_object or json_schema, "
                                                f"got {response_format.type!r}")
        if response_format.json_schema is None or response_format.json_schema.schema_ is None:
            raise StructuredOutputsError(field, "response_format json_schema needs json_schema.schema")
        return StructuredOutputsParams(json=response_format.json_schema.schema_)
    if field == "structured_outputs":
        return StructuredOutputsParams.from_dict(fields.structured_outputs)
    if field == "guided_json":
        return StructuredOutputsParams(json=fields.guided_json)
    if field == "guided_regex":
        return StructuredOutputsParams(regex=fields.guided_regex)
    if field == "guided_choice":
        return StructuredOutputsParams(choice=tuple(fields.guided_choice))
    return StructuredOutputsParams(grammar=fields.guided_grammar)
