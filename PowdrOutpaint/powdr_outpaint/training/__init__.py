"""Training: finding and preparing cases, the training stream, warps, the loop and its reports."""
