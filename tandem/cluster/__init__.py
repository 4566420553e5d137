"""A cluster's shape as pods and their launches, and running one on this machine."""
