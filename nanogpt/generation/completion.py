"""From generated ids to the text a user sees: where a completion ends (a stop string, GPT-2's
<|endoftext|>), and how much of it is safe to show while it is still being generated."""


class Endings:
    """Where a completion ends: at the first of the stop strings, for a BPE at <|endoftext|>, and for a
    chat answer (chat=True) also at any turn marker, <|end|> first of all (nanogpt/chat.py)."""

    def __init__(self, tokenizer, stops=(), chat=False):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        eot = getattr(tokenizer, "eot_token", None)
        self.end_tokens = {eot} - {None} | (set(tokenizer.chat_ids.values()) if chat else set())
        self.possible = bool(self.stops or self.end_tokens)  # else no completion ends early

    def end(self, ids):
        """How many of the ids come before the first end token (all of them if none)."""
        return next((i for i, token in enumerate(ids) if token in self.end_tokens), len(ids))

    def text(self, ids):
        """The completion's text: the ids decoded, cut where it ends."""
        text = self.tokenizer.decode(ids[: self.end(ids)])
        cuts = [text.index(stop) for stop in self.stops if stop in text]
        return text[: min(cuts)] if cuts else text

    def ended(self, ids):
        return self.end(ids) < len(ids) or any(stop in self.tokenizer.decode(ids) for stop in self.stops)

    def __call__(self, row, ids):
        """For Engine.generate: keep every id of a row that has ended (text() cuts it), None to go on."""
        return len(ids) if self.ended(ids) else None

    def shown(self, ids, final=False):
        """The part of the text that is safe to show now: all of it once the completion is over; before,
        without an unfinished character (a BPE token can end inside one) or a tail that could be the
        start of a stop string."""
        text = self.text(ids)
        if final or self.ended(ids):
            return text
        text = text.rstrip("\ufffd")
        held = max((len(stop) - 1 for stop in self.stops), default=0)
        return text[: len(text) - held] if held else text
