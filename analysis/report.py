"""Everything a study reports, read back from MLflow: tables, the Pareto front, CSVs and figures.

`build_report(study, info, out_dir)` is called by the launcher at the end of a study
and by `analysis.export`, with a `results.StudyRecords`; it reads only finished child runs, so failed or diverged
trials never reach a table or the front, and a resumed study reports the trials from
before and after an interruption alike.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import pandas as pd

from trainables.data import FIXED_PARTS
from trainables.methods import available, get
from trainables.metrics import PROTOCOL_LABEL
from trainables.records import (BASE_STAGE, BASELINE_STAGE, CONFIRM_LIMIT, CONFIRM_STAGE, METHOD_COL, REFERENCE_ROWS,
                                SEARCH_STAGE, SEED_COL, STAGE_COL, STUDIED, TRIAL_KEY_COL, journal_path,
                                optuna_study_name, setting_of, write_atomic)

from . import plots, sequential, tables, tuning
from .audit import audit_table, plot_epsilons, plot_forget_quality, ulira_markdown, ulira_table
from .audit import to_markdown as audit_markdown
from .choice import search_front
from .pareto import pareto_front
from .tables import MARGIN
from .results import StudyRecords

AXES = tables.AXES


@dataclass
class StudyInfo:
    """What the report needs of a study's settings. Its fields are named as the study's settings
    (`study.config.StudyConfig`) and so as the parent run's params, which is how both are read."""

    experiment_name: str
    dataset: str
    protocol: str
    objective: str
    paper_baselines: bool
    results_dir: str
    budget: int | None = None  # trials per searched method (`gli_trials` in studies recorded before the name)
    replicates: int | None = None  # reported replicates at the start (`seeds` in studies recorded before the name)
    until_settled: bool = False
    max_replicates: int | None = None
    margin: float = MARGIN
    round_size: int | None = None
    baselines: list | None = None  # the study's baselines (None: a study recorded before the list: all of them)
    looks: list | None = None  # the look schedule fixed when the study first started (None: recorded before it)
    primary: str = "final_score"  # the one metric the verdicts test
    study_key: str | None = None  # the study's identity (its Optuna studies are named by it)
    audit: int = 0  # the audit's K (0: every audit run the study holds, as for a study recorded before this field)
    audit_ceiling: str = "retrained"

    @property
    def label(self) -> str:
        return PROTOCOL_LABEL[self.protocol]

    @property
    def title(self) -> str:
        """Short: the protocol is stated once per report (`preamble`), not in every caption and figure."""
        return f"{self.experiment_name} ({self.dataset})"

    @property
    def looks_planned(self) -> bool:
        return bool(self.looks) or bool(self.replicates and self.max_replicates)

    @property
    def schedule(self) -> list[int]:
        """The looks: with `--until-settled` as recorded (or, for a study recorded before the schedule, as derived
        then); without it, one look at the reported replicates."""
        if not self.until_settled:
            return [int(self.replicates)] if self.replicates else []
        if self.looks:
            return [int(n) for n in self.looks]
        if not (self.replicates and self.max_replicates):
            return []
        return sequential.look_sizes(self.replicates, self.max_replicates, self.round_size or 1)

    @property
    def preamble(self) -> str:
        fixed = (" The benchmark fixes the forget set (and retain, test and unseen): a replicate redraws only the "
                 "selection and report halves." if self.dataset in FIXED_PARTS else "")
        return (f"# {self.title}\n\nProtocol: {self.label}.{self.baselines_note}\n\nA replicate r is split seed r and "
                f"training seed r together: replicate 0 tuned every search and is never reported; every row below "
                f"comes from replicates 1 and up, on their report halves.{fixed}\n")

    @property
    def baselines_note(self) -> str:
        """How the baselines were set: searched with the budget, or at fixed settings, saying whose."""
        if not self.paper_baselines:
            trials = f" ({self.budget} trials)" if self.budget else ""
            return f" Every baseline searched with the same budget as GLI{trials}."
        authors = [m for m in available() if get(m).defaults_from == "authors"
                   and (self.baselines is None or m in self.baselines)]
        return (" Baselines at fixed settings, not searched: the GLI notebooks' settings"
                + (f"; {', '.join(authors)} (which the notebooks do not have) at their authors' defaults"
                   if authors else "") + ".")

    @classmethod
    def from_params(cls, params: dict) -> "StudyInfo":
        """From the parent run's (decoded) params, or from a `StudyConfig` as a dict. A study recorded before a
        setting existed lacks it: its old name is read (`tune_baselines`, the opposite of `paper_baselines`;
        `gli_trials`; `seeds`), else the field's default."""
        values = {f.name: params.get(f.name) for f in fields(cls)}
        if values["paper_baselines"] is None:
            values["paper_baselines"] = not params.get("tune_baselines", False)
        if values["budget"] is None:
            values["budget"] = params.get("gli_trials")
        if values["replicates"] is None:
            values["replicates"] = params.get("seeds")
        for f in fields(cls):
            if values[f.name] is None and f.default is not MISSING:
                values[f.name] = f.default
        return cls(**values)


def method_rows(children: pd.DataFrame, paper_baselines: bool) -> pd.DataFrame:
    """Rows that make the table: base models, baselines (their confirmed searched settings, or their paper
    settings with `paper_baselines`) and GLI's confirmed settings."""
    if len(children) == 0:
        return children
    stage = children[STAGE_COL]
    keep = (stage == BASE_STAGE) | ((stage == BASELINE_STAGE) & paper_baselines) | (stage == CONFIRM_STAGE)
    # the base models of the reported replicates only: the tuning replicate's are never reported
    reported = set(children.loc[keep & (stage != BASE_STAGE), SEED_COL])
    if reported:
        keep &= (stage != BASE_STAGE) | children[SEED_COL].isin(reported)
    rows = children[keep].copy()
    rows["method"] = rows[METHOD_COL]
    rows["setting"] = rows[TRIAL_KEY_COL].map(setting_of)
    return rows


def ended_rows(children: pd.DataFrame, paper_baselines: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From every child run (any status): the table's finished rows and the rows of every run that ended, finished
    or failed (`sequential.settle` counts a replicate once each of its runs has ended)."""
    if not len(children):
        return children, children
    ended = method_rows(children[children["status"].isin(["FINISHED", "FAILED"])], paper_baselines)
    return ended[ended["status"] == "FINISHED"], ended


def _losses(study: StudyRecords, rows: pd.DataFrame, summary: pd.DataFrame) -> dict:
    """Per table row, the losses of its chosen setting's first seed."""
    out = {}
    for _, r in summary.iterrows():
        match = rows[(rows["method"] == r["method"]) & (rows["setting"] == r.get("setting", ""))]
        if len(match):
            first = match.sort_values(SEED_COL).iloc[0]
            loaded = study.load_losses(first["run_id"])
            if loaded is not None:
                out[r["method"]] = loaded
    return out


def load_optuna(info: StudyInfo, method: str = STUDIED):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = journal_path(info.results_dir, info.study_key)
    if not journal.exists():
        return None
    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        name = optuna_study_name(info.experiment_name, method, info.protocol, info.objective, info.study_key)
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def build_report(study: StudyRecords, info: StudyInfo, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Write every table, CSV and figure to `out_dir`; returns (summary, GLI front, paths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    children = study.children()
    gli = children[children[STAGE_COL] == SEARCH_STAGE] if len(children) else children
    front = search_front(gli, info.objective, CONFIRM_LIMIT)
    rows = method_rows(children, info.paper_baselines)
    summary = tables.summarise(rows)
    audit, epsilons = audit_table(study, info.audit, info.audit_ceiling)
    attack = ulira_table(study)
    if len(audit) and len(summary):
        quality = {(r["method"], r["setting"]): r["forget_quality"] for _, r in audit.iterrows()}
        summary["forget_quality"] = [quality.get((m, s)) for m, s in zip(summary["method"], summary["setting"])]
    written: list[Path] = []

    def write(name: str, text: str) -> None:
        written.append(write_atomic(out_dir / name, text))

    finished, ended = ended_rows(study.children(status=None), info.paper_baselines)
    # one design reads the comparisons: the study's looks (one, at --replicates, without --until-settled)
    pairs = sequential.settle(finished, info.schedule, info.margin, ended=ended, primary=info.primary)
    verdicts = pairs if info.until_settled and info.looks_planned else None
    confirmed = set(rows[rows[STAGE_COL] == CONFIRM_STAGE]["method"]) if len(rows) else set()
    searched = [STUDIED] + ([] if info.paper_baselines else sorted(confirmed - {STUDIED}))  # the tuning cards
    studies = {m: s for m in searched if (s := load_optuna(info, m)) is not None}
    cards, curves = tuning.tuning_tables(studies, info.budget, rows, summary)
    selection = tuning.selection_table(children, rows)
    # the verdicts first: what a paper may claim, then the table they come from
    first = sequential.verdicts_markdown(pairs, info.title, info.margin)
    write("summary.md", info.preamble + "\n" + first + "\n"
          + tables.to_markdown(summary, info.title, info.dataset) + "\n" + tuning.tuning_markdown(cards) + "\n"
          + (tuning.selection_markdown(selection) + "\n" if len(selection) else "")
          + audit_markdown(audit, info.title) + ("\n" + ulira_markdown(attack, info.title) if len(attack) else ""))
    if len(selection):
        write("selection.csv", selection.to_csv(index=False))
    if len(cards):
        write("tuning.csv", cards.to_csv(index=False))
        write("tuning_trials.csv", curves.to_csv(index=False))
    if len(audit):
        write("audit.csv", audit.to_csv(index=False))
    if len(attack):
        write("ulira.csv", attack.to_csv(index=False))
    if len(pairs):
        write("paired.csv", pairs.to_csv(index=False))
    if verdicts is not None and len(verdicts):
        write("verdicts.csv", verdicts.to_csv(index=False))
    write("summary.tex", tables.to_latex(summary, f"{info.title}; {info.label}", info.dataset))  # a caption alone
    write("summary.csv", tables.to_csv(summary, info.dataset).to_csv(index=False))
    params = [c for c in gli.columns if c.startswith("params.")] if len(gli) else []
    keep = ["run_id", SEED_COL, TRIAL_KEY_COL] + AXES + ["sel_fs_se", "sel_accuracy_se"] + params
    trials = gli[[c for c in keep if c in gli]].copy() if len(gli) else pd.DataFrame(columns=keep)
    trials["on_front"] = trials[TRIAL_KEY_COL].isin(front[TRIAL_KEY_COL]) if len(front) else False
    write("gli_trials.csv", trials.to_csv(index=False))
    refs = summary[summary["method"] != STUDIED] if len(summary) else summary
    # front.csv: the front figure's points, what the tables report (means over the reported replicates on the
    # report halves, with their intervals): every method's row and each confirmed GLI setting
    gli_rows = rows[(rows["method"] == STUDIED) & (rows[STAGE_COL] == CONFIRM_STAGE)] if len(rows) else rows
    settings = tables.summarise(gli_rows.assign(method=gli_rows["setting"])) if len(gli_rows) else pd.DataFrame()
    axes = [f"{m}{suffix}" for m in ("accuracy", "forgetting_score", "final_score") for suffix in ("", "_lo", "_hi")]
    points = []
    if len(summary):
        points.append(summary[["method", "seeds"] + [a for a in axes if a in summary]].assign(
            kind=["reference" if m in REFERENCE_ROWS else "gli" if m == STUDIED else "baseline"
                  for m in summary["method"]]))
    if len(settings):
        on_front = set(pareto_front(settings, "accuracy", "forgetting_score")["method"])
        points.append(settings[["method", "seeds"] + [a for a in axes if a in settings]].rename(
            columns={"method": "setting"}).assign(method=STUDIED, kind=[
                "gli_front" if s in on_front else "gli_setting" for s in settings["method"]]))
    write("front.csv", (pd.concat(points, ignore_index=True) if points else pd.DataFrame()).to_csv(index=False))
    try:
        written += plots.plot_report_front(summary, settings, f"{info.title}: means over replicates, report halves",
                                           out_dir / "front")
        written += plots.plot_front(gli, front if info.objective == "pareto" else front.head(0), refs,
                                    f"{info.title}: GLI's search, tuning replicate, selection halves",
                                    out_dir / "search")
        written += plots.plot_losses(_losses(study, rows, summary), info.title, out_dir / "losses")
        if epsilons:
            written += plot_epsilons(epsilons, info.title, out_dir / "audit_epsilons", audit)
        written += plot_forget_quality(audit, info.title, out_dir / "audit_quality")
        written += plots.plot_tuning(curves, info.title, out_dir / "tuning")
        search = studies.get(STUDIED)
        if search is not None:
            written += plots.plot_optuna(search, info.title, out_dir)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, OSError) as exc:
        # what matplotlib, pandas and the disk raise for a figure they cannot draw or write: the tables are
        # written already, and a figure must never cost the study them; one line says which failed
        print(f"[report] warning: a figure failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    return summary, front, written
