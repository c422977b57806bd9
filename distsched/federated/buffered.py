"""The client side of a buffered asynchronous run (FedBuff): who trains when, on which model version.

A deterministic event simulation. ``concurrency`` clients are in flight; a client launched at simulated
time ``t0`` on model version ``v`` arrives at ``t0 + T``, with ``T = steps / speed_k * jitter`` from
:class:`~distsched.federated.sampling.Stragglers` (a log-normal speed per client, a log-normal jitter per
launch). Arrivals are taken in order of ``(time, wave, client)``; when all arrivals at one instant are
taken, as many idle clients are launched at that instant, on the version current then, as there are free
slots (one launch ``wave``, drawn by :func:`~distsched.federated.sampling.sample_idle`). The server takes
arrivals until its buffer holds ``buffer_size`` of them, then steps; launches due at that instant happen
after the step.

No client trains at its launch: every client launched on version ``t`` is trained when the server is
about to leave version ``t`` (when it steps to ``t + 1``, all launches on ``t`` are known), in one
executor call with the current model, and its update waits in :attr:`pending` until it arrives. Memory:
``concurrency`` updates (``8 d`` bytes each). The round's randomness is a function of ``(seed, wave)``,
and :meth:`state_dict` holds the queue, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distsched._checks import check_int
from distsched.federated.sampling import Stragglers, sample_idle

#: ``(arrival time, wave, client, version)`` of a client in flight
Flight = tuple[float, int, int, int]


class BufferedClients:
    """The event queue of a FedBuff run (module docstring).

    Args:
        num_clients: registered clients.
        concurrency: clients in flight at once (``<= num_clients``).
        buffer_size: arrivals per server step.
        stragglers: the latency model (speeds and jitter).
        seed: the launch draws' seed.
    """

    def __init__(self, num_clients: int, concurrency: int, buffer_size: int, stragglers: Stragglers,
                 seed: int) -> None:
        self.num_clients = check_int("num_clients", num_clients, 1)
        self.concurrency = check_int("max_concurrency", concurrency, 1)
        if concurrency > num_clients:
            raise ValueError(f"strategy.params.max_concurrency must be <= the {num_clients} clients, got {concurrency}")
        self.buffer_size = check_int("buffer_size", buffer_size, 1)
        self.stragglers = stragglers
        self.seed = int(seed)
        self.now = 0.0
        self.wave = 0
        self.launch_due = True
        self.flights: list[Flight] = []  # a heap
        #: ``(client, wave)`` launched on the current version, not trained yet
        self.untrained: list[tuple[int, int]] = []
        #: ``(client, wave)`` -> its trained update (float64) and training loss, waiting to arrive (a client
        #: may be launched again on the same version after it arrived, so the wave is part of the key)
        self.pending: dict[tuple[int, int], tuple[np.ndarray, float]] = {}

    def _launch(self, version: int, steps_of: Callable[[np.ndarray], np.ndarray]) -> None:
        busy = np.fromiter((f[2] for f in self.flights), dtype=np.int64, count=len(self.flights))
        clients = sample_idle(self.seed, self.wave, self.concurrency - len(busy), busy, self.num_clients)
        times = self.stragglers.times(self.wave, clients, steps_of(clients))
        for client, duration in zip(clients.tolist(), times.tolist()):
            heapq.heappush(self.flights, (self.now + duration, self.wave, client, version))
            self.untrained.append((client, self.wave))
        self.wave += 1

    def fill(self, version: int, steps_of: Callable[[np.ndarray], np.ndarray]) -> list[tuple[int, int, int]]:
        """Launch and take arrivals until ``buffer_size`` have arrived at the server, now at ``version``;
        their ``(client, wave, launch version)`` in arrival order. ``steps_of(clients)``: local steps each."""
        arrived: list[tuple[int, int, int]] = []
        while len(arrived) < self.buffer_size:
            if self.launch_due:
                self._launch(version, steps_of)
                self.launch_due = False
            when, wave, client, launched_on = heapq.heappop(self.flights)
            self.now = when
            arrived.append((client, wave, launched_on))
            self.launch_due = not self.flights or self.flights[0][0] > when  # all arrivals at `when` taken
        return arrived

    def take_untrained(self) -> tuple[np.ndarray, np.ndarray]:
        """The clients launched on the current version and their waves, in launch order; cleared."""
        clients = np.array([c for c, _ in self.untrained], dtype=np.int64)
        waves = np.array([w for _, w in self.untrained], dtype=np.int64)
        self.untrained = []
        return clients, waves

    def store(self, clients: np.ndarray, waves: np.ndarray, updates: np.ndarray, losses: np.ndarray) -> None:
        """Keep the trained ``updates`` (rows) and ``losses`` of ``clients`` launched in ``waves`` until they
        arrive."""
        for client, wave, row, loss in zip(np.asarray(clients).tolist(), np.asarray(waves).tolist(), updates,
                                           np.asarray(losses).tolist()):
            self.pending[(client, wave)] = (row, loss)

    def collect(self, arrived: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """The ``(K, d)`` updates and the ``K`` losses of the ``arrived`` clients, removed from :attr:`pending`."""
        taken = [self.pending.pop((client, wave)) for client, wave, _ in arrived]
        return np.stack([row for row, _ in taken]), np.array([loss for _, loss in taken])

    def state_dict(self) -> dict[str, Any]:
        """The queue as tensors (after a server step nothing is untrained)."""
        if self.untrained:
            raise RuntimeError("BufferedClients.state_dict between launch and training")
        f = sorted(self.flights)
        pending = sorted(self.pending)
        return {
            "now": self.now, "wave": self.wave, "launch_due": self.launch_due,
            "flight_time": torch.tensor([x[0] for x in f], dtype=torch.float64),
            "flight_ids": torch.tensor([list(x[1:]) for x in f], dtype=torch.int64).reshape(-1, 3),
            "pending_ids": torch.tensor(pending, dtype=torch.int64).reshape(-1, 2),
            "pending_updates": torch.from_numpy(np.stack([self.pending[c][0] for c in pending]))
            if pending else torch.zeros(0, dtype=torch.float64),
            "pending_losses": torch.tensor([self.pending[c][1] for c in pending], dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.now, self.wave, self.launch_due = float(state["now"]), int(state["wave"]), bool(state["launch_due"])
        self.flights = [(t, w, c, v) for t, (w, c, v) in zip(state["flight_time"].tolist(),
                                                            state["flight_ids"].tolist())]
        heapq.heapify(self.flights)
        self.untrained = []
        rows, losses = state["pending_updates"].numpy(), state["pending_losses"].tolist()
        self.pending = {(c, w): (rows[i].copy(), losses[i]) for i, (c, w) in enumerate(state["pending_ids"].tolist())}
