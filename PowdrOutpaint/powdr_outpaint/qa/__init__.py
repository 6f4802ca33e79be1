"""Quality: metrics of outpainted samples, evaluating a run, and the QA report."""
