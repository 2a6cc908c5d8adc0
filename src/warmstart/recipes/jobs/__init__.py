"""Jobs: one command per user goal, its settings measured on the user's own data.

`warmstart adapt` (continued pre-training: max LR and replay share) and `warmstart derive` (a smaller model by
Inheritune: the blocks and the LR) are compositions of the layers below them: the format probe and `prepare`
(data), short probe runs of the one training loop (`train()`), a recorded decision, the full run, eval and the
report. A job adds decisions, never a second loop or a second run-directory format: every probe and the full run
is an ordinary run directory inside the job's directory, and what was decided is a JSON file beside them.

Layout of a job directory (`--out`):

    job.json          the command's settings, as validated (a re-run must give the same ones)
    format.json       the format probe's table and winner (the data's BOS / document end)
    data/             the prepared text (`warmstart prepare`; cached by content: unchanged text is not re-tokenized)
    shift.json        the checkpoint's loss on each domain's validation windows before training
    probes/NAME/      one run directory per candidate setting; probes/NAME/rung-R.json its per-window losses
    decision.json     every candidate, its probe losses, the rule, what was chosen and why, the FLOPs spent deciding
    run/              the full run (its FLOPs start at the FLOPs spent deciding: `init.charged_flops`)
    report/           the report: the decision table first, then the gap, forgetting and compute

Every stage writes its result atomically and is skipped when its result is there, so a job killed anywhere
continues where it stopped when the same command is run again.
"""
