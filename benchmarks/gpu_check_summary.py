"""The summary of a benchmarks/gpu_check.sh run, read off its step logs.

gpu_check.sh keeps every step's logs in one folder (LOGS): plan.txt (the
steps and their budgets, in order), env.txt (the machine), and per step
STEP.status (key=value: status, rc, seconds, budget) and STEP*.log. A log's
name says how to read it: *.pytest.log (pytest's counts, its first failure
with the traceback, a crash or timeout dump), *check.log (compute-sanitizer's
summary and first report), build*.log (the first compiler error), anything
else (the last traceback or the tail).

    python3 benchmarks/gpu_check_summary.py write LOGS OUT/summary.md [--console]
        writes the summary (atomically: concurrent steps call it too);
        --console also prints it with the table last
    python3 benchmarks/gpu_check_summary.py crashed-test LOG
        prints the node id of the first test that crashed its process, if any
"""
import os
import re
import sys

EXCERPT_LINES = 80
COUNT_WORDS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
FINAL_LINE = re.compile(r"^=*\s*((?:\d+ \w+,? ?)+) in [\d.]+s")
RESULT_WORD = re.compile(r"\b(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
SECTION = re.compile(r"^_{3,} (.+?) _{3,}$")
CRASHED = re.compile(r"crashed while running '([^']+)'")


def read(path):
    with open(path, errors="replace") as f:
        return f.read().splitlines()


def excerpt(lines, start, end=None):
    end = len(lines) if end is None else end
    end = min(end, start + EXCERPT_LINES)
    return "\n".join(lines[start:end])


def last_traceback_or_tail(lines):
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    return excerpt(lines, starts[-1]) if starts else excerpt(lines, max(0, len(lines) - 40))


def pytest_counts(lines):
    """{word: count}: pytest's final line, or, when the run was cut short
    before it, one count per test result line."""
    for line in reversed(lines):
        match = FINAL_LINE.match(line)
        if match:
            counts = {}
            for number, word in re.findall(r"(\d+) (\w+)", match.group(1)):
                word = "error" if word == "errors" else word
                if word in COUNT_WORDS:
                    counts[word] = counts.get(word, 0) + int(number)
            return counts, True
    counts = {}
    for line in lines:
        if "short test summary info" in line:
            break
        match = RESULT_WORD.search(line)
        if match and "::" in line and not line.startswith(("$ ", "[gpu_check]")):
            word = {"XFAIL": "xfailed", "XPASS": "xpassed"}.get(match.group(1), match.group(1).lower())
            counts[word] = counts.get(word, 0) + 1
    return counts, False


def started_tests(lines):
    """Node ids that pytest -v printed as started without a result."""
    return [line.split()[0] for line in lines
            if "::" in line and not line.startswith("$ ") and not RESULT_WORD.search(line)]


def pytest_failure(lines):
    """The first failure's section (its traceback), then any crash or
    timeout dump, which the failure sections do not hold."""
    parts = []
    for i, line in enumerate(lines):
        if re.match(r"^=+ (FAILURES|ERRORS) =+$", line):
            first = next((j for j in range(i + 1, len(lines)) if SECTION.match(lines[j])), None)
            if first is not None:
                end = next((j for j in range(first + 1, len(lines)) if SECTION.match(lines[j])
                            or lines[j].startswith("====")), len(lines))
                parts.append(excerpt(lines, first, end))
            break
    for marker in ("Fatal Python error", "+ Timeout +", "Timeout (0:", "!!! KeyboardInterrupt !!!"):
        at = next((i for i, line in enumerate(lines) if marker in line), None)
        if at is not None:
            started = started_tests(lines[:at + 1])
            context = [f"(last test started: {started[-1]})"] if started else []
            parts.append("\n".join(context + [excerpt(lines, at)]))
            break
    return "\n\n".join(parts) or last_traceback_or_tail(lines)


def crashed_test(lines):
    for line in lines:
        match = CRASHED.search(line)
        if match:
            return match.group(1)
    at = next((i for i, line in enumerate(lines) if "Fatal Python error" in line), None)
    if at is None:
        return None
    started = started_tests(lines[:at + 1])
    return started[-1] if started else None


def sanitizer_counts(lines):
    return [line.replace("=========", "").strip() for line in lines if re.search(r"(ERROR|RACECHECK) SUMMARY", line)]


def sanitizer_failure(lines):
    reports = [i for i, line in enumerate(lines) if line.startswith("========= ")
               and not re.search(r"COMPUTE-SANITIZER|SUMMARY|^=========\s*$", line)]
    if reports:
        end = next((j for j in range(reports[0], len(lines)) if not lines[j].startswith("=========")), len(lines))
        return excerpt(lines, reports[0], end + 1)
    return last_traceback_or_tail(lines)


def build_failure(lines):
    at = next((i for i, line in enumerate(lines) if re.search(r"\berror\b|^FAILED:", line, re.IGNORECASE)), None)
    return excerpt(lines, max(0, at - 5)) if at is not None else last_traceback_or_tail(lines)


def read_log(path):
    """(counts text, whether it shows a failure, the failure's excerpt or "").
    gpu_check.sh marks a command that failed or ran out of time with a line
    starting "[gpu_check] FAILED" or "[gpu_check] TIMED OUT"."""
    lines = read(path)
    name = os.path.basename(path)
    marked = any(line.startswith(("[gpu_check] FAILED", "[gpu_check] TIMED OUT")) for line in lines)
    if name.endswith(".pytest.log"):
        counts, complete = pytest_counts(lines)
        text = ", ".join(f"{counts[w]} {w}" for w in COUNT_WORDS if w in counts)
        if not complete:
            text = f"{text} (cut short)" if text else "cut short before any result"
        failed = marked or counts.get("failed", 0) + counts.get("error", 0) > 0 or not complete
        return text or "no tests ran", failed, pytest_failure(lines) if failed else ""
    if name.endswith("check.log"):
        counts = sanitizer_counts(lines)
        clean = bool(counts) and all(re.search(r"\b0 (errors|hazards)", c) for c in counts)
        tool = name.rsplit(".", 2)[-2]
        failed = marked or not clean
        return f"{tool}: " + ("; ".join(counts) or "no summary"), failed, sanitizer_failure(lines) if failed else ""
    if name.endswith(".cuda-gdb.log"):  # only run for a crash: its native backtrace
        at = next((i for i, line in enumerate(lines) if "received signal" in line), max(0, len(lines) - 40))
        return "", True, excerpt(lines, at)
    if not marked:
        return "", False, ""
    return "", True, build_failure(lines) if name.startswith("build") else last_traceback_or_tail(lines)


def key_values(path):
    values = {}
    if os.path.exists(path):
        for line in read(path):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def step_logs(logs, step):
    names = sorted(n for n in os.listdir(logs) if n.endswith(".log") and re.match(rf"{re.escape(step)}[._]", n))
    return [os.path.join(logs, n) for n in names]


def summarise(logs):
    """(markdown text, table lines) of the run whose logs are in `logs`."""
    plan = [line.split() for line in read(os.path.join(logs, "plan.txt")) if line.strip()]
    env = key_values(os.path.join(logs, "env.txt"))
    table = ["| step | result | counts | time | budget |", "|---|---|---|---|---|"]
    failures, rerun = [], []
    for step, budget in plan:
        status = key_values(os.path.join(logs, f"{step}.status"))
        result = status.get("status", "not started")
        counts, first = [], []
        for path in step_logs(logs, step):
            text, failed, failure = read_log(path)
            if text:
                # tests_large.pytest.log -> "large: ..."; the step's own log unlabelled
                label = re.sub(r"(\.pytest)?\.log$", "", os.path.basename(path))[len(step) + 1:]
                counts.append(f"{label}: {text}" if label and not text.startswith(label) else text)
            if failed and failure:  # each failing command's first failure
                first += [f"`{os.path.basename(path)}`:", "", "```text", failure, "```", ""]
        seconds = f"{status['seconds']} s" if "seconds" in status else ""
        note = f" ({status['note']})" if status.get("note") else ""
        table.append(f"| {step} | {result}{note} | {'; '.join(counts)} | {seconds} | {budget} s |")
        if result not in ("passed",):
            rerun.append(step)
            failures += [f"## {step}: {result}", ""] + (first or ["(no failure in its logs)", ""])
    if rerun and "build" not in rerun:
        rerun.insert(0, "build")  # a fresh device machine has no build
    header = [
        "# gpu_check summary",
        "",
        f"{env.get('date', '?')}; {env.get('gpu', '?')}; torch {env.get('torch', '?')}; "
        f"nvcc {env.get('nvcc', '?')}; commit {env.get('commit', '?')}.",
        f"Per-test timeout: {env.get('test_timeout', '?')}; parallel pytest: {env.get('xdist', '?')}. "
        "Logs of every step: logs.tar.gz beside this file.",
        "",
    ]
    rerun_line = (f"Rerun what did not pass: `bash benchmarks/gpu_check.sh {' '.join(rerun)}`" if rerun
                  else "Every step passed.")
    text = "\n".join(header + table + ["", rerun_line, ""] + failures)
    return text, table + ["", rerun_line], failures


def write(logs, out, console):
    text, table, failures = summarise(logs)
    temporary = f"{out}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, out)
    if console:
        print("\n".join(failures + table))


def main(argv):
    if len(argv) >= 3 and argv[0] == "write":
        write(argv[1], argv[2], "--console" in argv[3:])
        return 0
    if len(argv) == 2 and argv[0] == "crashed-test":
        test = crashed_test(read(argv[1]))
        if test:
            print(test)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
