"""From generated ids to the text a user sees: where a completion ends (a stop string, GPT-2's
<|endoftext|>), and how much of it is safe to show while it is still being generated."""


class Endings:
    """Where a completion ends: at the first of the stop strings, and for GPT-2 BPE at <|endoftext|>."""

    def __init__(self, tokenizer, stops=()):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.end_token = getattr(tokenizer, "eot_token", None)
        self.possible = bool(self.stops) or self.end_token is not None  # else no completion ends early

    def text(self, ids):
        """The completion's text: the ids decoded, cut where it ends."""
        if self.end_token in ids:
            ids = ids[: ids.index(self.end_token)]
        text = self.tokenizer.decode(ids)
        cuts = [text.index(stop) for stop in self.stops if stop in text]
        return text[: min(cuts)] if cuts else text

    def ended(self, ids):
        return self.end_token in ids or any(stop in self.tokenizer.decode(ids) for stop in self.stops)

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
