"""When and on what the server measures the global model (apart from the method's time).

``val_acc`` on the union of the clients' eval splits on ``run.val_every``'s schedule and
early stopping on it (``run.patience``); the server test set (its fixed
``run.test_subset``) on ``run.eval_every``'s schedule, on the fixed ``run.eval_subset``
of it except in the last round and where an architecture is derived; the accuracies
around a pruning (paper Table 3); every client's personalised model on its eval split on
``run.personal_eval_every``'s schedule (Table 5). It all runs on the server, which holds
every client's data and stored state, so no result depends on the rank count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..algorithms import Algorithm, ClientData, GlobalModel, RoundContext
from ..config import Config
from ..data import Dataset
from ..flat import State
from ..nas.spec import genotype_of
from ..store.record import RunState
from . import guards
from .schedule import eval_subset, patience_exhausted


class Evaluator:
    """The server's measurements of each round's global model (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        dataset: Dataset,
        algorithm: Algorithm,
        client_data: Callable[[int], ClientData],
    ):
        self.cfg, self.dataset, self.algorithm = cfg, dataset, algorithm
        self.client_data = client_data  # a client's data on the server's device
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None
        self._test_sub: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None

    def measure(
        self,
        ctx: RoundContext,
        run: RunState,
        old_spec: dict,
        averaged: State,
        metrics: dict[str, float],
    ) -> bool:
        """Measure the new global model (apart from the method's time): ``val_acc`` on
        ``run.val_every``'s schedule, then, as that decides whether this round is the
        last, the server test set, the accuracies around a pruning and the personalised
        ones. Returns whether early stopping (``run.patience``) ends the run here."""
        t_eval = time.perf_counter()
        cfg, model, r = self.cfg, run.model, ctx.round
        if cfg.run.val_every and ctx.is_due(cfg.run.val_every):
            metrics["val_loss"], metrics["val_acc"] = self.algorithm.evaluate_global(
                model, *self.val_set(), run.client_states
            )
        early = patience_exhausted(
            [
                *run.history.get("val_acc", [float("nan")] * len(run.stages)),
                metrics.get("val_acc", float("nan")),
            ],
            [self.algorithm.can_stop(i) for i in range(r + 1)],
            cfg.run.patience,
        )
        last = r + 1 == cfg.run.rounds or early
        loss = acc = float("nan")
        changed = model.spec != old_spec
        derived = genotype_of(model.spec) is not None and genotype_of(old_spec) is None
        # the whole test set where a result is read off (the end, the derivation)
        test = self.test_set(whole=last or derived)
        if changed or last or ctx.is_due(cfg.run.eval_every):
            loss, acc = self.algorithm.evaluate_global(model, *test, run.client_states)
            guards.check_loss(loss, r)
        if changed:
            metrics.update(self.prune_accuracies(old_spec, averaged, model, acc, test))
        every = cfg.run.personal_eval_every
        if last or (every and (r + 1) % every == 0):
            metrics.update(self.personal_accuracies(model, run.client_states, ctx))
        metrics.update(global_loss=loss, global_acc=acc, eval_time=time.perf_counter() - t_eval)
        return early

    def test_set(self, whole: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The server test set (its fixed ``run.test_subset``, the whole set when that is 0)
        on the server's device (moved there once); ``whole=False``: its fixed
        ``run.eval_subset`` (all of it when that is 0)."""
        dev = self.algorithm.device
        if self._test is None or self._test[0].device != dev:
            x, y = self.dataset.test_x, self.dataset.test_y
            keep = eval_subset(len(y), self.cfg.run.test_subset, "test_subset")
            if keep is not None:
                x, y = x[torch.from_numpy(keep)], y[torch.from_numpy(keep)]
            self._test = (x.to(dev), y.to(dev))
            idx = eval_subset(len(self._test[1]), self.cfg.run.eval_subset)
            self._test_sub = (
                self._test
                if idx is None
                else tuple(t[torch.from_numpy(idx).to(dev)] for t in self._test)
            )
        return self._test if whole else self._test_sub

    def val_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The union of every client's eval split (client order), on the server's device:
        the clients' own held-out data, for ``val_acc`` (built once)."""
        if self._val is None:
            parts = [self.client_data(c) for c in range(self.cfg.partition.num_clients)]
            self._val = (torch.cat([p.eval_x for p in parts]), torch.cat([p.eval_y for p in parts]))
        return self._val

    def personal_accuracies(
        self, model: GlobalModel, client_states: dict[int, State], ctx: RoundContext
    ) -> dict[str, float]:
        """Mean and std over all clients (each counted once; empty eval splits left out)
        of the accuracy of each client's personalised model on its eval split (Table 5).

        Runs on the server, which holds the data of every client and their stored state,
        so the result does not depend on the rank count.
        """
        accs = np.array(
            [
                self.algorithm.personal_accuracy(
                    model, self.client_data(c), client_states.get(c), ctx
                )
                for c in range(self.cfg.partition.num_clients)
            ],
            dtype=np.float64,
        )
        accs = accs[np.isfinite(accs)]
        if not accs.size:
            return {}
        return {"personal_acc": float(accs.mean()), "personal_acc_std": float(accs.std())}

    def prune_accuracies(
        self, old_spec: dict, averaged: State, new: GlobalModel, new_acc: float, test
    ) -> dict[str, float]:
        """The server step changed the architecture (pruning): accuracy of the averaged
        model just before (``acc_before_prune``) and of the new architecture with the
        weights it inherits from it (``acc_after_prune``; paper Table 3). A method that
        re-initialises after pruning (FedNAS) has ``global_acc`` of its fresh network."""
        before = GlobalModel(old_spec, averaged, new.server_state)
        _, acc_before = self.algorithm.evaluate(before, *test)
        if all(new.state[k] is averaged.get(k) for k in new.state):
            acc_after = new_acc  # the new model is the averaged one, restricted
        elif all(k in averaged for k in new.state):
            inherited = GlobalModel(new.spec, {k: averaged[k] for k in new.state}, new.server_state)
            _, acc_after = self.algorithm.evaluate(inherited, *test)
        else:
            acc_after = float("nan")
        return {"acc_before_prune": acc_before, "acc_after_prune": acc_after}
