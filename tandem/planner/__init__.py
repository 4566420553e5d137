"""`tandem plan`: whole clusters in virtual time, with the live system's engine and scheduler."""
