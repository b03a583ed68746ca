"""README.md and docs/: the commands they show refer to what exists (Make targets, scripts, modules, flags, Hydra
config groups and keys) and their links resolve. Fast: nothing is trained, served or run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300

ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
HYDRA_ENTRY = re.compile(r"""(?:config_name=|hydra_app\()\s*["']([\w-]+)["']""")
CLI_IMPORT = re.compile(r"^from (twotower\.cli\.\w+) import", re.M)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def bash_blocks(page: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", page.read_text(), flags=re.M | re.S)


def strip_comment(line: str) -> str:
    """The line up to a shell comment: a '#' at the start of a word, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands(page: Path) -> list[list[str]]:
    """Every command of the page's ```bash blocks as argv, continuation lines joined, comments and leading
    VAR=value assignments dropped."""
    found = []
    for block in bash_blocks(page):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(strip_comment(line))
            while argv and ENV_ASSIGNMENT.match(argv[0]):
                argv = argv[1:]
            if argv:
                found.append(argv)
    return found


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts] (read by hand: tomllib is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    pairs = re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section.group(1), flags=re.M) if section else []
    return dict(pairs)


def module_file(module: str) -> Path | None:
    """The repository file `python -m module` runs, or None for a module from elsewhere (pytest, pip)."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__main__.py"):
        if path.exists():
            return path
    return None


def entry_source(path: Path) -> str:
    """The entry point's source, with the twotower.cli module a thin script delegates to."""
    text = path.read_text()
    for module in CLI_IMPORT.findall(text):
        cli = module_file(module)
        if cli is not None:
            text += "\n" + cli.read_text()
    return text


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def has_path(node, keys: list[str]) -> bool:
    """Whether a dotted path exists; a null or scalar on the way ends what can be checked."""
    for key in keys:
        if not isinstance(node, dict):
            return True
        if key not in node:
            return False
        node = node[key]
    return True


def override_problems(config_name: str, args: list[str]) -> list[str]:
    """What is wrong with the Hydra overrides ``args`` of the entry point whose root config is ``config_name``."""
    root = load_yaml(CONF / f"{config_name}.yaml")
    problems = []
    for arg in args:
        if arg.startswith("-"):  # -m / --multirun, --help
            continue
        if "=" not in arg:
            problems.append(f"{arg}: not a Hydra override")
            continue
        key, value = arg.split("=", 1)
        adds = key.startswith(("+", "~"))
        key = key.lstrip("+~")
        path = key.split(".")
        head = path[0]
        if head == "hydra":
            continue
        group = CONF / head
        if len(path) == 1 and group.is_dir():
            if value != "null" and not (group / f"{value}.yaml").exists():
                problems.append(f"{arg}: no conf/{head}/{value}.yaml")
            continue
        if head not in root and not group.is_dir():
            if not adds:
                problems.append(
                    f"{arg}: {head} is neither a key of conf/{config_name}.yaml nor a config group"
                )
            continue
        # a key of the root config, or of an option of the group (a group's keys may sit in either)
        sources = [root] if head in root else []
        sources += [{head: load_yaml(option)} for option in group.glob("*.yaml")]
        if not adds and not any(has_path(source, path) for source in sources):
            problems.append(f"{arg}: no key {key} in conf/{config_name}.yaml or conf/{head}/*.yaml")
    return problems


def composes(config_name: str, args: list[str]) -> str | None:
    """Hydra's own verdict on the overrides (None when they compose), where Hydra is installed."""
    hydra = pytest.importorskip("hydra")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [arg for arg in args if not arg.startswith("-")]
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            hydra.compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        return f"{' '.join(overrides)}: {error}"
    return None


def check_entry(source: Path, args: list[str]) -> list[str]:
    text = entry_source(source)
    hydra_config = HYDRA_ENTRY.search(text)
    if hydra_config:
        name = hydra_config.group(1)
        problems = override_problems(name, args)
        if not problems and "-m" not in args and "--multirun" not in args:
            problems += [p for p in [composes(name, args)] if p]
        return problems
    flags = [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]
    return [f"{flag}: not an option of {page_id(source)}" for flag in flags if f'"{flag}"' not in text]


def command_problems(argv: list[str]) -> list[str]:
    program, args = argv[0], argv[1:]
    if program == "make":
        targets = [arg for arg in args if "=" not in arg and not arg.startswith("-")]
        return [f"make {t}: no such target in the Makefile" for t in targets if t not in make_targets()]
    if program in ("bash", "sh"):
        return [] if (ROOT / args[0]).exists() else [f"{args[0]}: no such file"]
    if program.startswith("twotower-"):
        target = console_scripts().get(program)
        if target is None:
            return [f"{program}: not in pyproject.toml [project.scripts]"]
        source = module_file(target.split(":")[0])
        return check_entry(source, args) if source else [f"{program}: {target} not found"]
    if Path(program).name.startswith("python"):
        if args[:1] == ["-m"]:
            module, rest = args[1], args[2:]
            source = module_file(module)
            if source is None:
                import importlib.util

                return [] if importlib.util.find_spec(module) else [f"python -m {module}: no such module"]
            return check_entry(source, rest)
        script = ROOT / args[0]
        if not script.exists():
            return [f"{args[0]}: no such script"]
        return check_entry(script, args[1:])
    return []  # curl, docker, pip: not ours to check


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}; detail goes to docs/)"
    )


def test_readme_shows_the_two_setup_commands():
    assert {("make", "demo"), ("make", "test")} <= {tuple(argv) for argv in commands(README)}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_commands_refer_to_what_exists(page):
    problems = [f"{' '.join(argv)}\n    {p}" for argv in commands(page) for p in command_problems(argv)]
    assert not problems, f"{page_id(page)}:\n" + "\n".join(problems)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    problems = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading with that anchor in {page_id(path)}")
    assert not problems, f"{page_id(page)}:\n" + "\n".join(problems)


def test_readme_links_every_docs_page():
    linked = {m for m in re.findall(r"\]\((docs/[\w.-]+\.md)", README.read_text())}
    pages = {page_id(page) for page in PAGES[1:]}
    assert pages and pages <= linked, f"not linked from README.md: {sorted(pages - linked)}"
