"""Message bodies: what a business can send, with Meta's limits as validation rules.

A body mirrors the Graph API's JSON (`{"type": "text", "text": {...}}`), so that a producer writing
to Kafka in any language writes almost exactly what Meta documents, and the client's payload builder
stays a thin merge. Limits come from Meta's documentation (docs/contracts.md lists them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, model_validator

# Meta counts characters, not bytes; pydantic's max_length counts code points, which matches.


class Body(BaseModel):
    # Strict: `"yes"` is not a bool, `true` is not a latitude, `"1"` is not an index. A coerced value
    # is a message the business did not write.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


EXTRA_DEPTH_LIMIT = 8
"""How deeply a template parameter's free-form value (`currency`, `date_time`, …) may nest."""


def _nesting(value: Any, limit: int) -> int:
    """How deeply `value` nests, counting up to `limit + 1` (a loop, not recursion: the value is untrusted)."""
    deepest, level, stack = 0, 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


# --- text ---------------------------------------------------------------------------------------


class TextContent(Body):
    body: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    preview_url: bool = False


class TextMessage(Body):
    type: Literal["text"] = "text"
    text: TextContent


# --- media --------------------------------------------------------------------------------------


class _MediaRef(Body):
    """Exactly one of `id` (an uploaded media id) or `link` (an HTTPS URL Meta fetches)."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    link: Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^https?://")] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.id is None) == (self.link is None):
            raise ValueError("exactly one of 'id' or 'link' is required")
        return self


class CaptionedMedia(_MediaRef):
    caption: Annotated[str, StringConstraints(max_length=1024)] | None = None


class DocumentMedia(CaptionedMedia):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=240)] | None = None


class ImageMessage(Body):
    type: Literal["image"] = "image"
    image: CaptionedMedia


class VideoMessage(Body):
    type: Literal["video"] = "video"
    video: CaptionedMedia


class DocumentMessage(Body):
    type: Literal["document"] = "document"
    document: DocumentMedia


class AudioMessage(Body):
    type: Literal["audio"] = "audio"
    audio: _MediaRef  # Meta rejects captions on audio


class StickerMessage(Body):
    type: Literal["sticker"] = "sticker"
    sticker: _MediaRef


# --- location and reaction ----------------------------------------------------------------------


class LocationContent(Body):
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    name: Annotated[str, StringConstraints(max_length=1000)] | None = None
    address: Annotated[str, StringConstraints(max_length=1000)] | None = None


class LocationMessage(Body):
    type: Literal["location"] = "location"
    location: LocationContent


class ReactionContent(Body):
    message_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    # An empty emoji removes the reaction. One emoji can span several code points (ZWJ sequences);
    # the longest standard (RGI) ones have 10, the sandbox's limit too.
    emoji: Annotated[str, StringConstraints(max_length=10)] = ""


class ReactionMessage(Body):
    type: Literal["reaction"] = "reaction"
    reaction: ReactionContent


# --- mark as read ---------------------------------------------------------------------------------


class ReadMessage(Body):
    """Mark a customer's message read (blue ticks) and optionally show "typing…" for up to 25 s.

    Flat, unlike the other bodies: Graph's call is `{"status": "read", "message_id": …}` on the
    messages endpoint, not a message with a typed payload (pipeline/whatsapp/payloads.py builds it).
    """

    type: Literal["read"] = "read"
    message_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="wamid of the inbound message to mark read"
    )
    typing_indicator: bool = Field(default=False, description="also show the typing indicator to the customer")


# --- template -----------------------------------------------------------------------------------


class TemplateLanguage(Body):
    code: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")]
    policy: Literal["deterministic"] = "deterministic"


class TemplateParameter(Body):
    """One template parameter; the field named by `type` carries its value (Meta's shape)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["text", "currency", "date_time", "image", "document", "video", "payload", "location"]
    text: Annotated[str, StringConstraints(min_length=1, max_length=32768)] | None = None
    payload: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    parameter_name: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None

    @model_validator(mode="after")
    def _value_present(self) -> Self:
        extra = self.model_extra or {}
        if getattr(self, self.type, None) is None and self.type not in extra:
            raise ValueError(f"a parameter of type '{self.type}' needs a '{self.type}' field")
        for name, value in extra.items():
            if _nesting(value, EXTRA_DEPTH_LIMIT) > EXTRA_DEPTH_LIMIT:
                raise ValueError(f"'{name}' nests deeper than {EXTRA_DEPTH_LIMIT} levels")
        return self


class TemplateComponent(Body):
    type: Literal["header", "body", "button", "footer", "carousel"]
    sub_type: Literal["quick_reply", "url", "copy_code", "flow", "catalog"] | None = None
    index: Annotated[int, Field(ge=0, le=9)] | None = None
    parameters: Annotated[list[TemplateParameter], Field(max_length=100)] = []

    @model_validator(mode="after")
    def _button_needs_position(self) -> Self:
        if self.type == "button" and (self.sub_type is None or self.index is None):
            raise ValueError("a button component needs 'sub_type' and 'index'")
        return self


class TemplateContent(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")]
    language: TemplateLanguage
    components: Annotated[list[TemplateComponent], Field(max_length=20)] = []


class TemplateMessage(Body):
    type: Literal["template"] = "template"
    template: TemplateContent


# --- interactive --------------------------------------------------------------------------------


class InteractiveText(Body):
    """Body text of a reply-button message."""

    text: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


# Meta allows list bodies four times the length of button bodies; the sandbox checks the same.
class ListBodyText(Body):
    """Body text of a list message."""

    text: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class InteractiveFooter(Body):
    text: Annotated[str, StringConstraints(min_length=1, max_length=60)]


class TextHeader(Body):
    type: Literal["text"] = "text"
    text: Annotated[str, StringConstraints(min_length=1, max_length=60)]


class MediaHeader(Body):
    type: Literal["image", "video", "document"]
    image: _MediaRef | None = None
    video: _MediaRef | None = None
    document: _MediaRef | None = None

    @model_validator(mode="after")
    def _media_matches_type(self) -> Self:
        if getattr(self, self.type) is None:
            raise ValueError(f"a header of type '{self.type}' needs a '{self.type}' field")
        return self


def _header_kind(value: object) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "text" if kind == "text" else "media"


ButtonsHeader = Annotated[
    Annotated[TextHeader, Tag("text")] | Annotated[MediaHeader, Tag("media")], Discriminator(_header_kind)
]


class ReplyButtonContent(Body):
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    title: Annotated[str, StringConstraints(min_length=1, max_length=20)]


class ReplyButton(Body):
    type: Literal["reply"] = "reply"
    reply: ReplyButtonContent


class ButtonsAction(Body):
    buttons: Annotated[list[ReplyButton], Field(min_length=1, max_length=3)]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        titles = [b.reply.title for b in self.buttons]
        ids = [b.reply.id for b in self.buttons]
        if len(set(titles)) != len(titles):
            raise ValueError("button titles must be unique")
        if len(set(ids)) != len(ids):
            raise ValueError("button ids must be unique")
        return self


class ButtonsInteractive(Body):
    type: Literal["button"] = "button"
    header: ButtonsHeader | None = None
    body: InteractiveText
    footer: InteractiveFooter | None = None
    action: ButtonsAction


class ListRow(Body):
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    title: Annotated[str, StringConstraints(min_length=1, max_length=24)]
    description: Annotated[str, StringConstraints(max_length=72)] | None = None


class ListSection(Body):
    title: Annotated[str, StringConstraints(min_length=1, max_length=24)] | None = None
    rows: Annotated[list[ListRow], Field(min_length=1, max_length=10)]


class ListAction(Body):
    button: Annotated[str, StringConstraints(min_length=1, max_length=20)]
    sections: Annotated[list[ListSection], Field(min_length=1, max_length=10)]

    @model_validator(mode="after")
    def _rows_total(self) -> Self:
        rows = [row for section in self.sections for row in section.rows]
        if len(rows) > 10:
            raise ValueError(f"at most 10 rows across all sections; got {len(rows)}")
        ids = [row.id for row in rows]
        if len(set(ids)) != len(ids):
            raise ValueError("row ids must be unique across sections")
        if len(self.sections) > 1 and any(s.title is None for s in self.sections):
            raise ValueError("every section needs a title when there is more than one")
        return self


class ListInteractive(Body):
    type: Literal["list"] = "list"
    header: TextHeader | None = None  # lists take text headers only
    body: ListBodyText
    footer: InteractiveFooter | None = None
    action: ListAction


class InteractiveMessage(Body):
    type: Literal["interactive"] = "interactive"
    interactive: Annotated[ButtonsInteractive | ListInteractive, Field(discriminator="type")]


MessageBody = Annotated[
    TextMessage
    | TemplateMessage
    | InteractiveMessage
    | ImageMessage
    | VideoMessage
    | DocumentMessage
    | AudioMessage
    | StickerMessage
    | LocationMessage
    | ReactionMessage
    | ReadMessage,
    Field(discriminator="type"),
]
"""Any body a send request may carry, chosen by its `type`."""
