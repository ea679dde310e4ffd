"""What ``spark-submit`` runs: ``spark-submit [its options] spark_submit.py score INPUT --output OUTPUT
--engine spark [...]`` takes ``python -m tagifai_api``'s arguments; the master and the configuration
are spark-submit's."""

from tagifai_api.cli import main

main()
