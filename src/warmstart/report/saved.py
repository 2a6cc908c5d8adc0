"""Compute saved: the tokens and FLOPs a run needs to reach its baseline's final loss, like with like.

The baseline is the run the method replaces, chosen by the user (`report --baseline RUN`):
- a continued run (re-warming, replay, a stability-gap strategy): the same model trained from scratch on the same
  new data (for the replay question, a from-scratch run on the union of old and new data);
- an Inheritune run: the same-shape random init trained on the same data;
- a mixture: the uniform (or the user's) mixture at the same budget, from the same start.

**Numbers.** target = the baseline's final `metric`; a run's *to target* = the tokens (FLOPs) of its first
evaluation at or below the target, linear between evaluation points ("not reached" if never; a run that starts
at or below it reaches it at its first evaluation, i.e. at 0 of its own tokens); the baseline's own need is
found the same way (its first crossing of its final value).
- **marginal**: each run's own tokens/FLOPs. fraction = run / baseline; saved = 1 - fraction.
- **total**: the same plus the compute of the checkpoint the run started from (its *upstream*): 0 for a run from
  scratch; for `init.from` = a warmstart run directory (or its `final/`), that run's summary.json tokens/FLOPs
  plus, recursively, its own upstream; for an inherited checkpoint (`inherit` writes `inherited.json`), the
  upstream of the reference it was cut from (the block search that chose the cut, if any, is in the run's own
  FLOPs: `inherited.json` `choice.search_flops`, charged from step 0 by train/setup_run.py); for anything else
  (a hub model, a converted checkpoint) unknown unless given (`--upstream-tokens RUN=N`, `--upstream-flops RUN=F`; RUN is a run of the
  report, by name or path, or the `init.from` value itself). total fraction = (upstream(run) + run's need) /
  (upstream(baseline) + baseline's need); saved = 1 - that. An unknown upstream leaves the total empty.

**Like with like.** A run is *not comparable* with the baseline — its saved cells say "not comparable: REASON"
and nothing is computed — when, with both sides known:
1. the metric is missing from the run's evaluations;
2. the metric is `val/avg/loss` and the two runs evaluate different domain sets (the averages are over
   different texts);
3. the eval data differ: a compared domain's prepared fingerprint (index.json `fingerprint`), `eval.windows`
   (packed vs documents), `eval.max_tokens` (a different sample), or, for packed windows, `data.packing`;
4. `data.seq_len` differs, or the tokenizer's vocabulary hash (index.json `tokenizer.vocab_hash`) differs;
5. either run started from a checkpoint (continued or inherited) and the parameter counts (summary.json
   `params`) differ: a continued run is compared with the same model from scratch, an inherited one with the
   same shape.
Facts a side does not record (no config.yaml, a moved data directory) are not checked, and the row says which
("unchecked: ..."). Comparable rows say what is compared ("continued from X vs from scratch", "inherited from X
vs random init", "both from scratch", ...) and flag a training-data difference ("data differ: ...") and, for two
runs from scratch, a size difference (then the FLOPs columns are the fair ones), and a run distilled from a
teacher (`distill.teacher`): its FLOPs include the teacher's forward passes (train/setup_run.py), so its FLOPs
columns charge the teacher and its tokens columns do not — the equal-FLOP and the equal-token comparison; likewise
a run from a cut chosen by a block search (summary.json `init_flops`): its FLOPs start at the search's.
"""

from __future__ import annotations

import json
from pathlib import Path

from warmstart.errors import UserError
from warmstart.models.inherit_record import INHERITED_FILE
from warmstart.report.data import Run, final_value, reach
from warmstart.runtime import rundir


# ----------------------------------------------------------------------------------------------- run facts
def _init_from(config: dict) -> str | None:
    init = config.get("init") or {}
    v = init.get("from", init.get("from_"))
    return str(v) if v else None


def _read_json(p: Path) -> dict:
    """A data index or inherited.json as a dict; {} when missing or unreadable (the facts it would give are then
    unchecked, and the row says so)."""
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
        return {}
    return obj if isinstance(obj, dict) else {}


def _data_index(config: dict, domain: str) -> dict:
    d = (config.get("data") or {}).get("dir")
    return _read_json(Path(d) / domain / "index.json") if d else {}


def _vocab_hash(run: Run) -> str | None:
    for dom in run.domains():
        h = (_data_index(run.config, dom).get("tokenizer") or {}).get("vocab_hash")
        if h:
            return str(h)
    return None


def start_kind(run: Run) -> tuple[str, str | None]:
    """('scratch' | 'continued' | 'inherited', the init.from value)."""
    src = _init_from(run.config)
    if src is None:
        return "scratch", None
    if (Path(src) / INHERITED_FILE).is_file():
        return "inherited", src
    return "continued", src


def upstream_compute(
    src: str | None, given: dict[str, tuple[float | None, float | None]], seen: tuple[str, ...] = ()
) -> tuple[float | None, float | None, str]:
    """(tokens, FLOPs, how) of the checkpoint `src` a run started from, following init.from chains.

    `given` maps an init.from value (or a run name/path, resolved by the caller) to (tokens, FLOPs); None = unknown.
    """
    if src is None:
        return 0.0, 0.0, "from scratch"
    if src in given:
        t, f = given[src]
        if t is not None and f is not None:
            return t, f, f"{src}: given"
        # one of the two given: the other as recorded (not silently unknown)
        rest = _Given({k: v for k, v in given.items() if k != _same_checkpoint(src)})
        rt, rf, how = upstream_compute(src, rest, seen)
        if isinstance(given, _Given):
            given.asked |= rest.asked
        said = "tokens" if t is not None else "FLOPs"
        return (rt if t is None else t), (rf if f is None else f), f"{src}: {said} given, the rest from {how}"
    if src in seen:
        raise UserError(f"report: init.from chain loops at {src}")
    inh = Path(src) / INHERITED_FILE
    if inh.is_file():
        ref = _read_json(inh).get("from")
        if not ref:
            return None, None, f"{src}: {INHERITED_FILE} names no reference"
        t, f, how = upstream_compute(str(ref), given, (*seen, src))
        return t, f, f"cut from {how}"
    run_dir = rundir.run_of_checkpoint(src)
    if run_dir is None:
        return None, None, f"{src}: compute unknown (give --upstream-tokens/--upstream-flops)"
    summary = rundir.load_summary(run_dir)  # a damaged upstream summary: one line naming it, not a silent "unknown"
    config = rundir.read_config(run_dir) or {}
    t0, f0, how = upstream_compute(_init_from(config), given, (*seen, src))
    tok, fl = summary.get("tokens"), summary.get("flops")
    t = None if t0 is None or tok is None else t0 + float(tok)
    f = None if f0 is None or fl is None else f0 + float(fl)
    return t, f, f"{run_dir.name}" + ("" if how == "from scratch" else f" + {how}")


# ----------------------------------------------------------------------------------------------- comparing
def _eval_domains(run: Run, metric: str) -> list[str]:
    parts = metric.split("/")
    if len(parts) == 3 and parts[0] == "val" and parts[1] != "avg":
        return [parts[1]]
    return run.domains()


def _weights_text(w: dict) -> str:
    return " + ".join(f"{d} {float(v):.2f}" for d, v in sorted(w.items()) if float(v) > 0)


def eval_differences(run: Run, base: Run, metric: str) -> tuple[list[str], list[str]]:
    """(why `run`'s `metric` is not the same quantity as `base`'s, what could not be checked): the evaluation
    settings (windows, max_tokens, seq_len, packing of packed windows), the prepared eval data and tokenizer, the
    domains averaged, and the number of targets each domain's final evaluation scored."""
    problems: list[str] = []
    unchecked: list[str] = []
    if final_value(run, metric) is None:
        problems.append(f"no {metric} in its evaluations")
    if metric == "val/avg/loss" and set(run.domains()) != set(base.domains()):
        problems.append(
            f"evaluates {', '.join(sorted(run.domains()))}, the baseline {', '.join(sorted(base.domains()))}"
        )
    if not run.config or not base.config:
        unchecked.append("shape, data and tokenizer (no config.yaml)")
    else:
        ev_r, ev_b = run.config.get("eval") or {}, base.config.get("eval") or {}
        for key in ("windows", "max_tokens"):
            if ev_r.get(key) != ev_b.get(key):
                problems.append(f"eval.{key} {ev_r.get(key)} vs {ev_b.get(key)}")
        pr = (run.config.get("data") or {}).get("packing", "stream")
        pb = (base.config.get("data") or {}).get("packing", "stream")
        if ev_r.get("windows") == ev_b.get("windows") == "packed" and pr != pb:
            problems.append(f"packed windows read with data.packing {pr} vs {pb}")
        for dom in _eval_domains(run, metric):
            fr = _data_index(run.config, dom).get("fingerprint")
            fb = _data_index(base.config, dom).get("fingerprint")
            if fr and fb and fr != fb:
                problems.append(f"different eval data for {dom!r} (prepared fingerprint)")
            elif not (fr and fb):
                unchecked.append(f"eval data of {dom!r}")
        sr, sb = (run.config.get("data") or {}).get("seq_len"), (base.config.get("data") or {}).get("seq_len")
        if sr != sb:
            problems.append(f"seq_len {sr} vs {sb}")
        hr, hb = _vocab_hash(run), _vocab_hash(base)
        if hr and hb and hr != hb:
            problems.append("a different tokenizer (vocabulary hash)")
        elif not (hr and hb):
            unchecked.append("tokenizer")
    for dom in _eval_domains(run, metric):
        nr, nb = final_value(run, f"val/{dom}/tokens"), final_value(base, f"val/{dom}/tokens")
        if nr is not None and nb is not None and int(nr) != int(nb) and not problems:
            problems.append(f"{int(nr):,} vs {int(nb):,} {dom!r} targets scored")
    return problems, unchecked


def comparison(run: Run, base: Run, metric: str) -> tuple[str, str | None]:
    """(what is compared, in words; the reason it is not comparable, or None). Rules: the module docstring."""
    if run is base:
        return "baseline", None
    problems, unchecked = eval_differences(run, base, metric)
    notes: list[str] = []
    kr, src_r = start_kind(run)
    kb, src_b = start_kind(base)
    pr, pb = run.summary.get("params"), base.summary.get("params")
    if pr is not None and pb is not None and int(pr) != int(pb):
        if kr != "scratch" or kb != "scratch":
            problems.append(f"{int(pr):,} vs {int(pb):,} parameters (compare a started run with the same model)")
        else:
            notes.append(f"different size ({int(pr):,} vs {int(pb):,} params): compare FLOPs")
    elif pr is None or pb is None:
        unchecked.append("model size")

    name_r = Path(src_r).name if src_r else ""
    name_b = Path(src_b).name if src_b else ""
    if Path(src_r or "").name == rundir.FINAL:
        name_r = Path(src_r).parent.name
    if Path(src_b or "").name == rundir.FINAL:
        name_b = Path(src_b).parent.name
    if kr == "scratch" and kb == "scratch":
        label = "both from scratch"
    elif kb == "scratch":
        label = f"{kr} from {name_r} vs {'same-shape random init' if kr == 'inherited' else 'from scratch'}"
    elif kr == "scratch":
        label = f"from scratch vs {kb} from {name_b}"
    elif src_r == src_b:
        label = f"both {kr} from {name_r}"
    else:
        label = f"{kr} from {name_r} vs {kb} from {name_b}"
    for side, who in ((run, "run"), (base, "baseline")):
        teacher = ((side.config or {}).get("distill") or {}).get("teacher")
        if teacher and (who == "run" or side is not run):
            notes.append(f"{'' if who == 'run' else 'baseline '}distilled from {Path(teacher).name} (its forward "
                         "FLOPs counted)")
        search = float(side.summary.get("init_flops") or 0.0)
        probes = float(((side.config or {}).get("init") or {}).get("charged_flops") or 0.0)
        if search and (who == "run" or side is not run):
            what = "cut chosen by a block search" if not probes else (
                "settings chosen by probes" if probes >= search else "cut and settings chosen by measurement")
            notes.append(f"{'' if who == 'run' else 'baseline '}{what} ({search:.3g} FLOPs counted from its step 0)")
    wr, wb = run.summary.get("weights"), base.summary.get("weights")
    if isinstance(wr, dict) and isinstance(wb, dict):
        same = {d for d, v in wr.items() if float(v) > 0} == {d for d, v in wb.items() if float(v) > 0} and all(
            abs(float(wr.get(d, 0)) - float(wb.get(d, 0))) < 1e-9 for d in set(wr) | set(wb)
        )
        notes.append("same data" if same else f"data differ: {_weights_text(wr)} vs {_weights_text(wb)}")
    text = "; ".join([label, *notes] + ([f"unchecked: {', '.join(unchecked)}"] if unchecked else []))
    return text, ("; ".join(problems) if problems else None)


# ----------------------------------------------------------------------------------------------- compute saved
def _same_checkpoint(spec: str) -> str:
    """One spelling per checkpoint: a local path resolved (a run directory as its final/), a hub name as is."""
    p = Path(spec).expanduser()
    try:
        if p.is_dir() and not (p / "config.json").is_file() and (rundir.final_dir(p) / "config.json").is_file():
            p = rundir.final_dir(p)
        return str(p.resolve()) if p.exists() else spec
    except (OSError, RuntimeError):  # a symlink loop or an unreadable path: compared as written
        return spec


class _Given(dict):
    """The given upstream compute by checkpoint (`_same_checkpoint`, so `./runs/a/`, `runs/a` and `runs/a/final`
    are one key), remembering which entries a lookup asked for."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked: set[str] = set()

    def __contains__(self, key: object) -> bool:
        k = _same_checkpoint(str(key))
        self.asked.add(k)
        return super().__contains__(k)

    def __getitem__(self, key: str):
        return super().__getitem__(_same_checkpoint(str(key)))


def check_upstream_values(tokens: dict[str, float] | None, flops: dict[str, float] | None) -> None:
    """UserError naming the flag for a given upstream value that is not a finite number >= 0."""
    for flag, given in (("--upstream-tokens", tokens or {}), ("--upstream-flops", flops or {})):
        for key, value in given.items():
            if not 0 <= float(value) < float("inf"):
                raise UserError(f"{flag} {key}={float(value):g}: not a finite number >= 0 (the tokens or FLOPs of "
                                "the checkpoint's pre-training)")


def _upstream_given(
    runs: list[Run], tokens: dict[str, float] | None, flops: dict[str, float] | None
) -> tuple[_Given, dict[str, str]]:
    """--upstream-tokens/--upstream-flops keyed by a run (name or path) or an init.from value -> by init.from,
    and which key each came from (values checked by `check_upstream_values`)."""
    tokens, flops = tokens or {}, flops or {}
    by_src: dict[str, list[float | None]] = {}
    keys: dict[str, str] = {}
    for key in sorted(set(tokens) | set(flops)):
        src = key
        for r in runs:
            if key in (r.name, str(r.path)) or Path(key).resolve() == r.path.resolve():
                src = _init_from(r.config)
                if src is None:
                    raise UserError(f"--upstream-*: {key} is a run from scratch (it has no upstream)")
                break
        src = _same_checkpoint(src)
        slot = by_src.setdefault(src, [None, None])
        for i, (flag, given) in enumerate((("--upstream-tokens", tokens), ("--upstream-flops", flops))):
            if key not in given:
                continue
            if slot[i] is not None and slot[i] != float(given[key]):  # two names for one checkpoint, two values
                raise UserError(f"{flag}: {keys[src]} and {key} name the same upstream checkpoint with different "
                                "values; give it once")
            slot[i] = float(given[key])
        keys.setdefault(src, key)
    return _Given({k: (v[0], v[1]) for k, v in by_src.items()}), keys


def _frac(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def compute_saved(
    runs: list[Run],
    baseline: Run,
    metric: str,
    upstream_tokens: dict[str, float] | None = None,
    upstream_flops: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Per run name: the comparison, marginal and total tokens/FLOPs to the baseline's final `metric`, fractions
    and savings (see the module docstring for every definition). Raises UserError when the baseline itself has
    no `metric`."""
    target = final_value(baseline, metric)
    if target is None:
        raise UserError(f"report: the baseline {baseline.path} has no {metric} in its eval events")
    last = next((m for m in reversed(baseline.evals) if metric in m), {})
    if last.get("step") != baseline.curve(metric)[-1][0]:  # its final value is null: NaN or infinite, not a target
        raise UserError(
            f"report: the baseline {baseline.path}'s final {metric} (step {last.get('step')}) is not a number (the "
            f"run diverged?); an earlier value would be a target it did not end at: give another --baseline"
        )
    given, keys = _upstream_given(runs, upstream_tokens, upstream_flops)
    base = reach(baseline.curve(metric), target)
    ub_t, ub_f, _ = upstream_compute(_init_from(baseline.config), given)
    ups = {run.name: upstream_compute(_init_from(run.config), given) for run in runs}
    unused = [keys[src] for src in given if src not in given.asked]
    if unused:  # a typo would otherwise fall back to the recorded compute without a word
        raise UserError(f"--upstream-tokens/--upstream-flops: {unused[0]} is none of the runs reported (name or path) "
                        "and no checkpoint any of them started from (init.from); check the name")
    out = {}
    for run in runs:
        compared, problem = comparison(run, baseline, metric)
        up_t, up_f, up_how = ups[run.name]
        row = {
            "metric": metric,
            "target": target,
            "compared_as": compared,
            "comparable": problem is None,
            "not_comparable": problem,
            "reached": False,
            "tokens_to_target": None,
            "flops_to_target": None,
            "token_fraction": None,
            "flop_fraction": None,
            "tokens_saved": None,
            "flops_saved": None,
            "upstream": up_how,
            "upstream_tokens": up_t,
            "upstream_flops": up_f,
            "total_tokens_to_target": None,
            "total_flops_to_target": None,
            "total_token_fraction": None,
            "total_flop_fraction": None,
            "total_tokens_saved": None,
            "total_flops_saved": None,
        }
        out[run.name] = row
        if problem is not None:
            continue
        hit = reach(run.curve(metric), target)
        if hit is None:
            continue
        row["reached"] = True
        row["tokens_to_target"], row["flops_to_target"] = hit
        row["token_fraction"] = _frac(hit[0], base[0])
        row["flop_fraction"] = _frac(hit[1], base[1])
        if up_t is not None:
            row["total_tokens_to_target"] = up_t + hit[0]
            row["total_token_fraction"] = _frac(up_t + hit[0], None if ub_t is None else ub_t + base[0])
        if up_f is not None:
            row["total_flops_to_target"] = up_f + hit[1]
            row["total_flop_fraction"] = _frac(up_f + hit[1], None if ub_f is None else ub_f + base[1])
        for k in ("token", "flop"):
            for pre in ("", "total_"):
                f = row[f"{pre}{k}_fraction"]
                row[f"{pre}{k}s_saved"] = None if f is None else 1.0 - f
    return out
