"""Continuous batching: requests join the running batch at the next step and leave it when they end.

One thread owns the model and the batch (an engine Rows). Each step it admits waiting jobs up to
max_rows, runs one Engine.step for all rows together, hands every job its new token, and drops the rows
that ended or whose client went away. A job never waits for another to finish, and a slow client never
holds up the step: tokens go to the job's callback, which only queues them.
"""

import collections
import threading
import time
from dataclasses import dataclass, field

import torch

from nanogpt.generation.engine import Rows
from nanogpt.generation.sampling import Sampling
from nanogpt.errors import first_line


class Busy(Exception):
    """Every row is taken and the queue is full."""


@dataclass
class Job:
    """One completion: its prompt ids, how it samples, at most how many tokens, and when it ends.
    ended(ids) says whether the ids so far end it (a stop string, end of text); deliver(event) gets
    ("token", id) after each step and finally ("done", ids, reason), reason 'stop' or 'length' (or
    ("error", message) if generation failed).
    Setting cancelled drops its row at the next step."""

    prompt: list
    sampling: Sampling
    max_tokens: int
    ended: object
    deliver: object
    cancelled: bool = False
    ids: list = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, engine, vocab_size, max_rows, max_queue, metrics=None):
        self.engine, self.vocab_size = engine, vocab_size
        self.max_rows, self.max_queue = max_rows, max_queue
        self.metrics = metrics
        self.waiting = collections.deque()
        self.running = 0
        self.condition = threading.Condition()
        self.model_lock = threading.Lock()  # the step holds it; anything else that runs the model takes it too
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self.thread.start()

    def submit(self, jobs):
        """Queue jobs (the choices of one request, admitted together); Busy if they do not fit."""
        with self.condition:
            room = (self.max_rows - self.running) + (self.max_queue - len(self.waiting))
            if len(jobs) > room:
                raise Busy
            self.waiting.extend(jobs)
            self.condition.notify()
            self._gauge("queue", len(self.waiting))

    def _admit(self, running):
        """Jobs to add to the batch now; waits while there is nothing to do."""
        with self.condition:
            while not self.waiting and not running:
                self.condition.wait()
            admitted = []
            while self.waiting and len(running) + len(admitted) < self.max_rows:
                job = self.waiting.popleft()
                if not job.cancelled:
                    admitted.append(job)
            self.running = len(running) + len(admitted)
            self._gauge("queue", len(self.waiting))
            return admitted

    def _run(self):
        rows, running = Rows(self.engine.config, self.vocab_size, self.engine.device), []
        while True:
            admitted = self._admit(running)
            running += admitted
            if not running:  # every waiting job was cancelled before it got a row
                continue
            self._gauge("running", len(running))
            if self.metrics:
                self.metrics["rows_per_step"].observe(len(running))
            try:
                if admitted:
                    rows.add(
                        [job.prompt for job in admitted],
                        [job.sampling for job in admitted],
                        max(job.max_tokens for job in admitted),
                    )
                with self.model_lock, torch.no_grad():
                    tokens = self.engine.step(rows).tolist()
            except Exception as e:  # e.g. out of memory: fail these requests, keep serving the next ones
                reason = first_line(e)
                for job in running:
                    job.deliver(("error", f"generation failed: {reason}"))
                rows, running = Rows(self.engine.config, self.vocab_size, self.engine.device), []
                with self.condition:
                    self.running = 0
                continue
            keep = []
            for r, (job, token) in enumerate(zip(running, tokens)):
                if job.cancelled:
                    self._count("cancelled")
                    continue
                job.ids.append(token)
                if len(job.ids) == 1 and self.metrics:
                    self.metrics["first_token_seconds"].observe(time.perf_counter() - job.submitted)
                self._count("tokens")
                job.deliver(("token", token))
                if job.ended(job.ids):
                    job.deliver(("done", job.ids, "stop"))
                elif len(job.ids) >= job.max_tokens:
                    job.deliver(("done", job.ids, "length"))
                else:
                    keep.append(r)
            if len(keep) < len(running):
                rows.keep(keep)
                running = [running[r] for r in keep]
                with self.condition:
                    self.running = len(running)
                self._gauge("running", len(running))

    def _gauge(self, name, value):
        if self.metrics:
            self.metrics[name].set(value)

    def _count(self, name):
        if self.metrics:
            self.metrics[name].inc()
