"""The feature-store stage: the Feast repo (definitions.py and its configurations), the daily snapshots
(`snapshots/`), the Feast plugins (`plugins/`), the columns of every view (`columns`) and `store.open_store`.
"""

import vitrine  # noqa: F401  (first: installs the filters of our dependencies' deprecation notices)

