"""Mutation check (`make mutants`): plants plausible one-line bugs, one at a time, in a copy of the repository
and runs the tests that must catch each, as CI runs them (not slow). A mutant the tests let through is a bug
the suite would ship.

    .venv/bin/python tests/mutants.py [--only NAME ...] [--list] [--no-baseline]

The copy (the working tree without .git, .venv and run outputs) comes first on ``PYTHONPATH`` and is the
working directory, so it is what gets imported, not the editable install; the tool checks that before
running anything. A baseline run of the named tests on the unmutated copy must pass first, so that a mutant
counts as caught only by a test that passed without it. An original text that is not in its file exactly
once is reported as such (code moved: update the mutant), never skipped; so is a mutated file with an
undefined name (ruff F821), whose failing tests would say nothing about the planted bug. Exit status 1 when
any mutant survives, is not found, is invalid or errors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = (".git", ".venv", "runs", "outputs", "multirun", "lightning_logs", "state", "__pycache__", "*.egg-info",
           ".pytest_cache", ".ruff_cache", "*.ckpt")  # fmt: skip
TIMEOUT_S = 900  # per pytest run: a mutant that makes a test hang counts as an error, not as caught


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # test files or node ids, run with -m "not slow"
    bug: str  # what the planted line stands for


MUTANTS = (
    Mutant("recall-cutoff", "twotower/metrics.py",
           "return float(np.mean(ranks <= k)) if len(ranks) else 0.0",
           "return float(np.mean(ranks < k)) if len(ranks) else 0.0",
           ("tests/test_metrics.py", "tests/test_ranking.py"),
           "recall@k counts a target ranked exactly k as a miss"),
    Mutant("ndcg-cutoff", "twotower/metrics.py",
           "gains = np.where(ranks <= k, ",
           "gains = np.where(ranks < k, ",
           ("tests/test_metrics.py", "tests/test_ranking.py"),
           "NDCG@k gives no gain to a target ranked exactly k"),
    Mutant("eval-excludes-window-only", "twotower/data/sequences.py",
           "return self.arrays.items[self.starts[index] : self._end(index)]",
           "return self.arrays.items[max(self.starts[index], self._end(index) - self.max_len) : self._end(index)]",
           ("tests/test_evaluate.py",),
           "evaluation excludes only the last max_len seen items of a longer history"),
    Mutant("batch-excludes-window-only", "serving/batch.py",
           "seen = np.sort(np.concatenate([b * n + h.rows for b, h in enumerate(histories)]))",
           "seen = np.sort(np.concatenate([b * n + h.rows[-rec.max_len :] for b, h in enumerate(histories)]))",
           ("tests/test_batch.py",),
           "batch scoring excludes only the last max_len seen items of a longer history"),
    Mutant("online-excludes-window-only", "serving/recommender.py",
           "exclude = np.concatenate([exclude, user_history.rows]) if len(exclude) else user_history.rows",
           "exclude = np.concatenate([exclude, user_history.rows[-self.max_len :]]) if len(exclude) else user_history.rows[-self.max_len :]",
           ("tests/test_batch.py", "tests/test_recommender.py"),
           "online answers exclude only the last max_len seen items of a longer history"),
    Mutant("train-target-shifted", "twotower/lit_module.py",
           'targets, weights = batch["targets"], batch["weights"]  # (B, L)',
           'targets, weights = batch["items"], batch["weights"]  # (B, L)',
           ("tests/test_train_e2e.py::test_training_learns_to_beat_popularity_on_the_synthetic_log",),
           "training predicts the last item read instead of the next one (the model does not learn)"),
    Mutant("resume-ignored", "twotower/train.py",
           "trainer.fit(module, datamodule=datamodule, ckpt_path=resume)",
           "trainer.fit(module, datamodule=datamodule)",
           ("tests/test_train_e2e.py::test_a_stopped_run_resumed_from_last_checkpoint_equals_an_uninterrupted_run",),
           "ckpt_path=last retrains from scratch"),
    Mutant("resume-without-rng", "twotower/callbacks.py",
           'torch.set_rng_state(state_dict["torch"])',
           "pass",
           ("tests/test_train_e2e.py::test_a_stopped_run_resumed_from_last_checkpoint_equals_an_uninterrupted_run",),
           "a resumed run draws other dropout masks than the run it continues"),
    Mutant("resume-batch-order-restarts", "twotower/callbacks.py",
           "sampler.epoch = trainer.current_epoch",
           "pass",
           ("tests/test_train_e2e.py::test_a_stopped_run_resumed_from_last_checkpoint_equals_an_uninterrupted_run",),
           "a resumed run's batches are those of epoch 0 again, not of the epoch it resumes"),
    Mutant("inf-loss-passes", "twotower/callbacks.py",
           "fresh = ~torch.isfinite(loss.detach()).all() & (self._first_bad < 0)",
           "fresh = torch.isnan(loss.detach()).any() & (self._first_bad < 0)",
           ("tests/test_train_e2e.py::test_a_non_finite_loss_stops_the_run_naming_the_step",),
           "an infinite loss trains on silently"),
    # ---- the history store and erasure (serving/store.py, serving/sqlitedb.py)
    Mutant("store-synchronous-off", "serving/sqlitedb.py",
           'f"PRAGMA synchronous={self.synchronous}",',
           '"PRAGMA synchronous=OFF",',
           ("tests/test_store.py",),
           "PRAGMA synchronous=OFF: acknowledged events lost and the file corrupted on a power cut"),
    Mutant("store-settings-unchecked", "serving/sqlitedb.py",
           "if got != want:",
           "if False:",
           ("tests/test_store.py",),
           "a durability pragma SQLite ignored passes for one that applied"),
    Mutant("reads-include-expired", "serving/store.py",
           "cutoff = time.time() - self.retention_s if self.retention_s else -math.inf",
           "cutoff = -math.inf",
           ("tests/test_store.py", "tests/test_store_contract.py"),
           "reads serve events older than the retention window until a sweep deletes them"),
    Mutant("sweep-keeps-cache", "serving/store.py",
           """            db.execute(
                "UPDATE users SET version = ? WHERE user_key IN (SELECT user_key FROM events WHERE stored_at < ?)",
                (clock, cutoff),
            )
""",
           "",
           ("tests/test_store.py", "tests/test_store_contract.py"),
           "a sweep leaves versions alone, so the live cache keeps serving the swept events"),
    Mutant("erasure-leaves-expired-rows", "serving/store.py",
           'count = db.execute("DELETE FROM events WHERE user_key = ?", (user_key,)).rowcount',
           'count = db.execute("DELETE FROM events WHERE user_key = ? AND stored_at >= ?", (user_key, time.time() - (self.retention_s or float("inf")))).rowcount',
           ("tests/test_erasure.py", "tests/test_store_contract.py"),
           "erasure deletes only the rows reads can see: expired rows stay on disk"),
    Mutant("erasure-no-checkpoint", "serving/store.py",
           """                       (erasure_key(user_key), time.time(), count))  # fmt: skip
        self._checkpoint()
""",
           """                       (erasure_key(user_key), time.time(), count))  # fmt: skip
""",
           ("tests/test_erasure.py",),
           "no WAL checkpoint after an erasure: the erased rows' old pages stay in the WAL file"),
    Mutant("erasure-log-raw-id", "serving/store.py",
           "(erasure_key(user_key), time.time(), count))  # fmt: skip",
           "(user_key, time.time(), count))  # fmt: skip",
           ("tests/test_erasure.py",),
           "the erasure log keeps the erased user's id"),
    # ---- the list re-rank and explanations (serving/core/diversify.py, serving/shaping.py)
    Mutant("mmr-forgets-the-chosen", "serving/core/diversify.py",
           "np.maximum(closest, scaled @ candidates.vectors[best], out=closest)",
           "closest.fill(0.0)",
           ("tests/test_diversify.py",),
           "diversity never sees the items already chosen: the list is the top-k with a constant penalty"),
    Mutant("cap-one-too-many", "serving/core/diversify.py",
           "if (per_category[members[best]] >= cap).any():",
           "if (per_category[members[best]] > cap).any():",
           ("tests/test_diversify.py",),
           "max_per_category lets one item more per category into the list"),
    Mutant("explore-unseeded", "serving/core/chooser.py",
           "rng = np.random.default_rng(seed) if settings.explore else None",
           "rng = np.random.default_rng() if settings.explore else None",
           ("tests/test_knobs.py",),
           "exploration ignores the request's seed: the same request gets another list"),
    Mutant("because-names-any-item", "serving/shaping.py",
           "recent = history[-WINDOW:]",
           "recent = np.arange(len(self.vectors))[-WINDOW:]",
           ("tests/test_knobs.py",),
           "explanations name catalog items the user never interacted with"),
    # ---- access control (serving/deps.py, serving/routes.py, serving/live_routes.py)
    Mutant("recommend-by-user-open", "serving/routes.py",
           "caller.need(READ)  # the answer depends on what is stored about the user",
           "pass  # the answer depends on what is stored about the user",
           ("tests/test_access.py",),
           "POST /recommend by user_id answers without a read token: the stored history leaks"),
    Mutant("history-open", "serving/live_routes.py",
           "dependencies=[require(READ)],",
           "dependencies=[],",
           ("tests/test_access.py",),
           "GET /users/{id}/history answers without a read token"),
    Mutant("any-scope-passes", "serving/deps.py",
           "if not self.auth_enabled or scope in self.scopes:",
           "if not self.auth_enabled or self.scopes:",
           ("tests/test_access.py",),
           "a token with any scope passes every scope check"),
    # ---- cross-rank negatives (DDP), query hashing
    Mutant("ddp-local-negatives", "twotower/losses.py",
           "cross_rank = self.cross_rank_negatives and distributed.active()",
           "cross_rank = False and distributed.active()",
           ("tests/test_ddp.py",),
           "under DDP each rank scores only its own batch's negatives, whatever the switch says"),
    Mutant("query-hash-unstable", "serving/core/texthash.py",
           'digest = blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()',
           'digest = hash(token).to_bytes(8, "little", signed=True)',
           ("tests/test_queries.py",),
           "query buckets from Python's salted hash(): training and serving disagree across processes"),
    # ---- user profiles: the start token's targets, audiences read the features
    Mutant("start-draws-leak", "twotower/data/sequences.py",
           "low, high = self.train_range[users, 0], self.train_range[users, 1]  # (B,), (B,)",
           "low, high = self.train_range[users, 0], self.train_range[users, 1] + 2  # (B,), (B,)",
           ("tests/test_context.py::test_start_targets_are_the_window_first_item_then_draws_from_the_users_training_events",),
           "the profile's extra targets are drawn from the validation and test events too (a leak)"),
    Mutant("audience-ignores-profile", "serving/audience.py",
           "feats = [table.get(u) for u in users] if table else None  # (F,) or None (unknown) per user",
           "feats = None",
           ("tests/test_context.py::test_audiences_read_each_users_features_by_raw_or_keyed_id",),
           "audiences encode users without their stored features (batch scoring reads them)"),
)  # fmt: skip


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # caught, SURVIVED, NOT FOUND, AMBIGUOUS, INVALID, ERROR
    seconds: float = 0.0
    detail: str = ""


def copy_tree(dest: Path) -> None:
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)


def environment(copy: Path) -> dict[str, str]:
    """The copy first on the path; data sets still found where the repository looks for them."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("TWOTOWER_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    return env


def check_imports_from(copy: Path) -> None:
    """Refuse to run when the packages would come from anywhere but the copy (every mutant would survive)."""
    probe = "import serving, twotower, tests.conftest; print(serving.__file__, twotower.__file__, tests.conftest.__file__)"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=environment(copy), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    files = proc.stdout.split()
    if proc.returncode != 0 or len(files) != 3 or not all(Path(f).is_relative_to(copy) for f in files):
        raise SystemExit(f"the copy's packages are not the ones imported: {proc.stdout}{proc.stderr}")


def run_tests(copy: Path, tests: tuple[str, ...], stop_first: bool) -> tuple[int, str, float]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    if stop_first:
        command.insert(4, "-x")
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=copy, env=environment(copy), capture_output=True, text=True,
                              timeout=TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s", time.perf_counter() - start
    return proc.returncode, proc.stdout[-3000:] + proc.stderr[-2000:], time.perf_counter() - start


def lint(path: Path) -> str:
    """Undefined names and syntax errors in a mutated file (ruff's F821), or "" when clean or without ruff."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        return ""
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--select", "F821", "--output-format", "concise",
                           str(path)], capture_output=True, text=True, timeout=60)  # fmt: skip
    return proc.stdout.strip() if proc.returncode else ""


def try_mutant(copy: Path, mutant: Mutant) -> Outcome:
    path = copy / mutant.path
    original = path.read_text() if path.exists() else ""
    found = original.count(mutant.original)
    if found != 1:
        status = "NOT FOUND" if found == 0 else "AMBIGUOUS"
        return Outcome(mutant, status, detail=f"{mutant.path}: original text found {found} times")
    path.write_text(original.replace(mutant.original, mutant.replacement))
    broken = lint(path)
    if broken:  # a test failing on a NameError or SyntaxError says nothing about the planted bug
        path.write_text(original)
        return Outcome(
            mutant, "INVALID", detail=f"the mutated file does not compile or names nothing:\n{broken}"
        )
    try:
        code, output, seconds = run_tests(copy, mutant.tests, stop_first=True)
    finally:
        path.write_text(original)
    # pytest: 1 = a test failed (caught), 0 = all passed (survived), anything else = could not judge
    status = {0: "SURVIVED", 1: "caught"}.get(code, "ERROR")
    if status == "caught":  # by the first failing test, named in pytest's summary
        failed = [line.split(" ")[1] for line in output.splitlines() if line.startswith("FAILED ")]
        return Outcome(mutant, status, seconds, failed[0].removeprefix("tests/") if failed else "")
    return Outcome(mutant, status, seconds, output)


def print_table(outcomes: list[Outcome]) -> None:
    width = max(len(o.mutant.name) for o in outcomes)
    print(f"\n{'mutant':{width}s}  {'status':9s}  {'seconds':>7s}  tests run -> caught by")
    for o in outcomes:
        tests = " ".join(t.removeprefix("tests/") for t in o.mutant.tests)
        caught_by = f" -> {o.detail}" if o.status == "caught" else ""
        print(f"{o.mutant.name:{width}s}  {o.status:9s}  {o.seconds:7.1f}  {tests}{caught_by}")
    for o in outcomes:
        if o.status != "caught":
            print(f"\n--- {o.mutant.name} {o.status}: {o.mutant.bug}\n{o.detail.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name}: {m.path}: {m.bug}")
        return 0
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; --list shows them")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    with tempfile.TemporaryDirectory(prefix="twotower-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        copy_tree(copy)
        check_imports_from(copy)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, output, seconds = run_tests(copy, tests, stop_first=False)
            print(f"baseline: {len(tests)} test files or ids, unmutated, exit {code} in {seconds:.0f} s")
            if code != 0:
                print(output)
                print("the tests fail without any mutant: fix them first")
                return 1
        outcomes = []
        for mutant in chosen:
            outcomes.append(try_mutant(copy, mutant))
            print(f"{mutant.name}: {outcomes[-1].status} ({outcomes[-1].seconds:.1f} s)", flush=True)
    print_table(outcomes)
    return 0 if all(o.status == "caught" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
