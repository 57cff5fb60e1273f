"""`theseus bootstrap`: what `submit` would run, as one script that someone runs by hand.

It is `submit` without the launch (validate, place and package, as a dry run: no host is asked
anything, nothing is sent or recorded), with the code snapshot and the job's files packed into
the script. It holds no secret: the environment the dispatch file gives the cluster and its host
(META_PASSWORD, API keys, PATH) is named in it, never written, and comes from wherever it runs.
"""

from __future__ import annotations

import base64
import dataclasses
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

from theseus.base.files import atomic_output
from theseus.dispatch import bootstrap
from theseus.dispatch import config as dispatch_config
from theseus.dispatch.backends import tarball
from theseus.dispatch.config import LOCAL, DispatchConfig, Host
from theseus.dispatch.solve import Placement, wanted
from theseus.dispatch.submit import SubmitOptions, package, place, split_commas, validate
from theseus.errors import UserError
from theseus.job import Request


@dataclass
class Script:
    """What `write_script` wrote, and for where."""

    path: Path
    cluster: str
    placement: Placement
    by_hand: bool  # placed on a host of its own: the dispatch file names none on the cluster
    environment_note: str  # what the environment that runs it must give

    def summary(self) -> str:
        path, host = shlex.quote(str(self.path)), self.placement.host_name
        if self.by_hand:
            how = (
                f"`sbatch {path}` on {self.cluster}'s SLURM login node, or `bash {path}` on a node"
            )
        elif self.placement.backend == "slurm":
            how = f"`sbatch {path}` on {host} (a SLURM login node), or `bash {path}` on a node"
        else:
            how = f"`bash {path}` on {'this machine' if host == LOCAL else host}"
        return f"wrote {self.path} for cluster {self.cluster}: run it with {how}\n{self.environment_note}"


def write_script(options: SubmitOptions, out: Path) -> Script:
    """Write the script that runs the submission `options` describes to `out` (private: it holds
    the stage configs)."""
    options = dataclasses.replace(options, dry_run=True)
    pipeline, _ = validate(options)
    settings, by_hand = _hosts_by_hand(
        dispatch_config.load(options.dispatch_file),
        split_commas(options.clusters),
        pipeline[0].request,
    )
    placement, _ = place(options, pipeline, settings)
    host = placement.host
    cluster = host.cluster if host else LOCAL
    if placement.host_name in by_hand and placement.chip != "cpu" and not options.targets:
        raise UserError(
            f"{cluster} has no host in the dispatch file to say which runtime its "
            f"{placement.chip} need; pass --target with its group (e.g. cuda12)"
        )
    snapshot, job = package(options, pipeline, placement, by_hand=True)
    note = _environment_note(placement)
    directives = bootstrap.sbatch_directives(options.name, host, placement, None) if host else []
    text = bootstrap.render(
        "bootstrap.sh",
        {
            "DIRECTIVES": "".join(line + "\n" for line in directives),
            "NAME": options.name,
            "CLUSTER": cluster,
            "ENVIRONMENT_NOTE": "\n".join("# " + line for line in textwrap.wrap(note, 96)),
            "SNAPSHOT": shlex.quote(job.snapshot_dir),
            "JOB_DIR": shlex.quote(job.dir),
            "SNAPSHOT_TARBALL": base64.encodebytes(snapshot.tarball()).decode().rstrip("\n"),
            "JOB_TARBALL": base64.encodebytes(_job_tarball(job)).decode().rstrip("\n"),
        },
    )
    with atomic_output(out, "bootstrap") as tmp:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o700)
    return Script(out, cluster, placement, placement.host_name in by_hand, note)


def _hosts_by_hand(
    settings: DispatchConfig, clusters: list[str] | None, request: Request
) -> tuple[DispatchConfig, set[str]]:
    """A cluster named with --cluster that no host of the dispatch file is on gets one here (and
    its name is returned): a SLURM host of one node with the chips asked for, so that the script
    asks sbatch for them."""
    chip, n = wanted(request)
    added = {
        f"{name}-by-hand": Host(
            type="slurm",
            cluster=name,
            chips={chip: n},
            uv_groups=["all", "cpu"] if chip == "cpu" else ["all"],
        )
        for name in clusters or []
        if name in settings.clusters and name != LOCAL
        if not any(host.cluster == name for host in settings.hosts.values())
    }
    return settings.model_copy(update={"hosts": {**settings.hosts, **added}}), set(added)


def _environment_note(placement: Placement) -> str:
    """What the environment that runs the script gives it: the JuiceFS password, and each
    variable the dispatch file sets for the cluster and its host (named, never written)."""
    names = sorted({*placement.cluster.env, *(placement.host.env if placement.host else {})})
    note = "No secret is written in it."
    if placement.cluster.mount:
        note += (
            " JuiceFS reads the metadata password from META_PASSWORD in the environment it runs "
            "with (sbatch passes yours on)."
        )
    if names:
        note += f" The dispatch file sets {', '.join(names)} for the job: export them there too."
    return note


def _job_tarball(job: bootstrap.JobFiles) -> bytes:
    return tarball({name: (text.encode(), mode) for name, (text, mode) in job.files.items()})
