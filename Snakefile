# The dead-directions sweep: checkpoints -> probe data -> detect -> measure -> store ->
# aggregate -> tables, figures -> report. See README.md ("The sweep") for the layout.
from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless a sweep file was given (--configfile): Snakemake would
# otherwise merge the two, and the default's families would join every named sweep.
if "families" not in config:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/guards.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/prune_common.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets,
        all_prune,
