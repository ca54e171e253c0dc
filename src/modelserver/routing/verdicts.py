"""The verdict on a worker at the end of each attempt: breaker, learned latency, ejection
of workers grown slow, and observers told (split from router.py)."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence

from modelserver.errors import NoHealthyWorker
from modelserver.routing.admin import WorkerSet
from modelserver.routing.admission import Admission
from modelserver.routing.answers import safely
from modelserver.routing.availability import Availability
from modelserver.routing.events import AttemptResult, ResumeRecord
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.retry import AttemptBudget
from modelserver.routing.worker import Worker

log = logging.getLogger("modelserver.routing.router")


class Verdicts(WorkerSet):
    """`Router`'s accounting of attempts; `ok=None` is no verdict (the caller left, the
    router closed, the engine rejected the request). Observers hear of each attempt's end,
    retries, resumes and models without a usable worker."""

    _availability: Availability
    admission: Admission

    def _finish(
        self,
        worker: Worker,
        request: RequestInfo,
        attempt: int,
        ok: bool | None,
        status: int | None,
        error: str | None,
        start: float,
        ttft: float | None,
        tokens: int | None,
        stream: bool,
    ) -> None:
        """Account for the end of an attempt. ok=None: no verdict on the worker."""
        now = self._clock()
        e2e = now - start
        worker.in_flight -= 1
        if worker.in_flight == 0 and worker.idle is not None:
            worker.idle.set()
        breaker = worker.breaker
        if ok:
            breaker.record_success()
            alpha = self.config.latency.ewma_alpha
            per_token = e2e / tokens if tokens else e2e
            if worker.ejected_at is not None:
                # A trial after ejection: judge it on this sample alone, not the stale EWMA.
                worker.ewma_latency = None
                worker.latency_samples = 0
            worker.observe_latency(per_token, alpha)
            if ttft is not None:
                worker.observe_ttft(ttft, alpha)
            self.policy.on_attempt_measured(worker, request, e2e, ttft, tokens)
            self._check_ejection(worker, now)
        elif ok is False:
            worker.errors += 1
            breaker.record_failure()
            if worker.ejected_at is not None:
                worker.trial_in_flight = False
                worker.ejected_at = now  # failed trial: another cool-down
        else:
            breaker.release_trial()
            worker.trial_in_flight = False
        self.policy.on_request_complete(worker, request, bool(ok))
        self.admission.finished(request.model, request.tenant, tokens)
        if self._observers:
            result = AttemptResult(
                model=request.model,
                worker=worker.url,
                path=request.path,
                attempt=attempt,
                stream=stream,
                ok=bool(ok),
                status=status,
                error=error,
                e2e_s=e2e,
                ttft_s=ttft,
                output_tokens=tokens,
            )
            for observer in self._observers:
                safely(observer.on_result, result)

    def _check_ejection(self, worker: Worker, now: float) -> None:
        """Eject `worker` if its latency grew past `ejection_ratio` × the median of its
        model's other measured workers; judge an ejected worker's trial the same way."""
        settings = self.config.latency
        latency = worker.ewma_latency
        trial = worker.ejected_at is not None
        if latency is None or (not trial and worker.latency_samples < settings.min_samples):
            return
        # Compared only with workers that could take its requests now: the stale EWMA of a
        # dead or broken one says nothing about what this one should manage.
        others = [
            w.ewma_latency
            for w in self._models.get(worker.model, ())
            if w is not worker
            and w.ewma_latency is not None
            and w.ejected_at is None
            and w.latency_samples >= settings.min_samples
            and w.out_reason(now, settings.readmit_after_s) is None
        ]
        if not others:
            if trial:
                _readmit(worker)
            return
        median = statistics.median(others)
        too_slow = (
            latency > settings.ejection_ratio * median and latency - median > settings.min_gap_s
        )
        if trial:
            worker.trial_in_flight = False
            if too_slow:
                worker.ejected_at = now
            else:
                _readmit(worker)
            return
        if too_slow and any(
            w is not worker and w.out_reason(now, settings.readmit_after_s) is None
            for w in self._models[worker.model]
        ):
            worker.ejected_at = now
            worker.ejection_note = (
                f"{latency * 1000:.1f} ms/token vs median {median * 1000:.1f} ms/token of the"
                f" others; bound ×{settings.ejection_ratio:g}"
            )
            log.warning("ejected %s: %s", worker.url, worker.ejection_note)

    def _notify_retry(
        self, model: str, worker: Worker | None, budget: AttemptBudget, backoff_s: float
    ) -> None:
        if not self._observers:
            return
        error = budget.attempts[-1] if budget.attempts else ""
        url = worker.url if worker is not None else ""
        for observer in self._observers:
            safely(observer.on_retry, model, url, error, len(budget.attempts) + 1, backoff_s)

    def _notify_resume(self, record: ResumeRecord) -> None:
        log.info(
            "stream of %s resumed on %s after %s (%s), %d tokens delivered",
            record.model,
            record.worker,
            record.failed_worker,
            record.error,
            record.delivered_tokens,
        )
        for observer in self._observers:
            safely(observer.on_resume, record)

    async def _no_healthy_worker(
        self, model: str, workers: Sequence[Worker], now: float, budget: AttemptBudget
    ) -> NoHealthyWorker:
        readmit = self.config.latency.readmit_after_s
        reasons = {w.url: w.out_reason(now, readmit) or "up" for w in workers}
        for attempt in budget.attempts:
            url, _, error = attempt.partition(": ")
            if url in reasons:
                reasons[url] = f"{reasons[url]}; last error: {error}"
        for observer in self._observers:
            safely(observer.on_no_healthy_worker, model, reasons)
        await self._availability.mark_down(model, reasons, self._models)
        return NoHealthyWorker(model, reasons)


def take_out_until_probed(worker: Worker, error: str) -> None:
    """Nothing listens at `worker` (the engine died): out now, not after the breaker's
    `failure_threshold` requests or the next reading of the launcher's state file; back once
    health probes answer again (`[router.health] success_threshold` in a row)."""
    if worker.probe_healthy:
        log.warning("%s is out: %s", worker.url, error)
    worker.probe_healthy = False
    worker.probe_successes = 0
    worker.last_probe_error = error


def _readmit(worker: Worker) -> None:
    worker.ejected_at = None
    worker.ejection_note = ""
    worker.trial_in_flight = False
    log.info("re-admitted %s: its latency is back within the bound", worker.url)
