# knobs
X = 0.9
WORK_S = 0.5
