#!/usr/bin/env bash
# Gradescope builds the autograder image with this script (as root, on its Ubuntu base image). It installs Python
# and the project's runtime requirements system-wide, so the unprivileged user the grader runs student code as
# (`nobody`) can import torch, and util-linux's setpriv, which drops root before student code starts.
# The grader needs no transformers/PEFT/pyreft: expected outputs ship in teach/expected/. About 3-5 minutes.
set -euo pipefail
apt-get update -q
apt-get install -y -q python3 python3-pip util-linux
python3 -m pip install -q --index-url https://download.pytorch.org/whl/cpu torch
python3 -m pip install -q -r /autograder/source/requirements.txt
chmod 700 /autograder/source  # the reference solution and the expected outputs: root only
