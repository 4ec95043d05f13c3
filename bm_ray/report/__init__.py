"""`report.html` of any job output, built from the output's files alone."""
