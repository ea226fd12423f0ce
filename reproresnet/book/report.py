"""What the book's notebooks call: the tables and figures computed from the run records under
`results/`, and how a table is shown (`html`, `shown`).

The notebooks only call these and show what they return, so everything a reader sees is
tested. The parts: which runs count and what they cost (`runs`), the tables as DataFrames of
values (`tables`, `speeds`, `plan`), the figures (`figures`), and the rendering by pandas
(`render`). Needs pandas and matplotlib, not torch: the book is built without it.
"""

from ..bench import BENCH_FORMAT, load_benches  # noqa: F401 (the notebooks' API)
from ..config import JPEG_MIRROR  # noqa: F401
from ..records import load_runs  # noqa: F401
from .figures import (FIGURE_WIDTH, LABEL_SIZE, curves_for_network, plot_curves,  # noqa: F401
                      plot_error_vs_size, run_figure)
from .plan import (CLAIM_RULE, STATUS_MIRROR, STATUS_PAPER, STATUS_SEED, budget_summary, claims_table,  # noqa: F401
                   plan_line, plan_table, status_line, status_table)
from .render import (MISSING, NOT_MEASURED, NOT_RUN, STATUS_WORDS, html, links, markdown_text, mean_std,  # noqa: F401
                     shown, to_noise)
from .runs import gpu_seconds, is_real_data, status_networks  # noqa: F401
from .speeds import bench_table, speed_table, thread_rules_table  # noqa: F401
from .tables import (EACH_SEED, NOTES, OURS, PAPER, PAPER_STATISTIC, SEED, SEED_HOURS, SEED_SECONDS,  # noqa: F401
                     ablation_table, architecture_table, compute_table, error_table, other_runs_table,
                     problems_table, recipe_table, run_index_table, run_summary)
