"""Thin adapters that drive the one trial objective (:func:`autocompress.trial.run_trial`)."""
