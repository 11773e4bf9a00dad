#!/usr/bin/env python3
"""Checks that template.yaml grants each function exactly the AWS calls its code makes.

Usage: check_iam.py [template.yaml]   (run from the repository root; exit 1 on a mismatch)

What a function calls is read from the code, not declared:

1. Operations per adapter: every AWS SDK fluent call (`.get_item()`, `.put_object()`, ...) in
   the tb-aws adapter sources (`shared/aws/src/{store,index,spill,archive,queue}.rs`; those in
   index.rs act on the table's indexes, `<table ARN>/index/*`), mapped to the
   IAM actions that authorise it (Service Authorization Reference: a DynamoDB
   TransactWriteItems is authorised per item kind, HeadObject by s3:GetObject). Reading an
   object also needs s3:ListBucket on the prefix, or a missing key reads as 403 instead of
   404 (S3 GetObject documentation, "Permissions").
2. Adapters per function: the ones its `main` builds (`aws.store(`, `aws.queue(`,
   `aws.archive(`); the store spills to `spill/`, the archive writes under `projects/`.
3. Queue sends per function: the queue port methods (`send_work`, `send_finalize`,
   `dead_letter`) called in the function's own code and in the tb-pipeline modules it runs. Which modules those are
   is the one declared part (ENTRY_MODULES); each declaration is checked against the
   function's code by the call it names, and a send in any other module fails the check.
4. Queues a function consumes: its event source mappings in the template; Lambda's poller
   needs ReceiveMessage, DeleteMessage and GetQueueAttributes on them (Lambda developer
   guide, "Execution role permissions" for Amazon SQS).

The template's policies must be explicit statements (SAM policy templates such as
DynamoDBCrudPolicy grant more than anything calls, so they are refused), and each
(action, resource) granted must be one required, and each required one granted.
"""

import re
import sys
from pathlib import Path

from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parent.parent
AWS_SRC = ROOT / "shared" / "aws" / "src"
PIPELINE_SRC = ROOT / "shared" / "pipeline" / "src"

FUNCTIONS = {
    # function -> (logical id in the template, source directories of its host code)
    "api": ("ApiFunction", ["functions/api/src", "shared/frontdoor/src"]),
    "worker": ("WorkerFunction", ["functions/worker/src"]),
    "finalizer": ("FinalizerFunction", ["functions/finalizer/src"]),
}

# The tb-pipeline modules each function runs, and the call in its host code that proves it.
ENTRY_MODULES = {
    "api": {
        "requests": r"requests\.(create|cancel)\(",
        "lifecycle": r"lifecycle::request_(delete|rollback)\(",
    },
    # A job on the work queue is created through `Requests`, which the worker builds.
    "worker": {"worker": r"handle_work\(|handle_batch\(", "requests": r"Requests::new\("},
    "finalizer": {
        "finalizer": r"finalizer::handle_batch\(",
        "project_ops": r"finalizer::handle_batch\(",
        # A failed verification goes back to the agent: a work message.
        "repair": r"finalizer::handle_batch\(",
    },
}

# SDK fluent call -> IAM actions, per service.
DYNAMODB = {
    "get_item": ["dynamodb:GetItem"],
    "put_item": ["dynamodb:PutItem"],
    "update_item": ["dynamodb:UpdateItem"],
    "delete_item": ["dynamodb:DeleteItem"],
    "query": ["dynamodb:Query"],
    "scan": ["dynamodb:Scan"],
    "describe_table": ["dynamodb:DescribeTable"],
    "batch_get_item": ["dynamodb:BatchGetItem"],
    "batch_write_item": ["dynamodb:BatchWriteItem"],
}
# TransactWriteItems: one action per item kind built into the transaction.
TRANSACT_ITEMS = {
    "put": "dynamodb:PutItem",
    "update": "dynamodb:UpdateItem",
    "delete": "dynamodb:DeleteItem",
    "condition_check": "dynamodb:ConditionCheckItem",
}
S3 = {
    "get_object": ["s3:GetObject"],
    "head_object": ["s3:GetObject"],
    "put_object": ["s3:PutObject"],
    "delete_object": ["s3:DeleteObject"],
    "list_objects_v2": ["s3:ListBucket"],
    "create_multipart_upload": ["s3:PutObject"],
    "abort_multipart_upload": ["s3:AbortMultipartUpload"],
}
SQS = {"send_message": ["sqs:SendMessage"], "send_message_batch": ["sqs:SendMessage"]}

QUEUE_METHODS = {
    "send_work": "WorkQueue",
    "send_finalize": "FinalizeQueue",
    "dead_letter": "WorkDeadLetterQueue",
}
CONSUMER_ACTIONS = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]

CALL = re.compile(r"\.([a-z_0-9]+)\(\)")


def strip_tests(text):
    """The source without its `#[cfg(test)]` module (tests talk to moto directly)."""
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


def sdk_calls(path, table):
    text = strip_tests(path.read_text())
    found = set()
    for name in CALL.findall(text):
        if name in table:
            found.update(table[name])
        if name == "transact_write_items" and table is DYNAMODB:
            for kind, action in TRANSACT_ITEMS.items():
                if re.search(rf"TransactWriteItem::builder\(\)\s*\.{kind}\(", text):
                    found.add(action)
    return found


def adapter_needs():
    """(action, resource) pairs per adapter; resources are (logical id, suffix)."""
    table = ("RequestsTable", "")
    store = {(a, table) for a in sdk_calls(AWS_SRC / "store.rs", DYNAMODB)}
    # The store's reads of its global secondary indexes live in index.rs, and only there: an
    # index is its own resource (`<table ARN>/index/<name>`).
    if re.search(r"\.index_name\(", strip_tests((AWS_SRC / "store.rs").read_text())):
        sys.exit("check_iam: store.rs reads an index; index reads belong in index.rs")
    index = ("RequestsTable", "/index/*")
    store |= {(a, index) for a in sdk_calls(AWS_SRC / "index.rs", DYNAMODB)}
    spill = s3_needs(sdk_calls(AWS_SRC / "spill.rs", S3), "spill/")
    archive = s3_needs(sdk_calls(AWS_SRC / "archive.rs", S3), "projects/")
    # Removing a deleted project's objects (only functions whose code removes any).
    removal = s3_needs(sdk_calls(AWS_SRC / "archive_delete.rs", S3), "projects/")
    return {"store": store | spill, "archive": archive, "archive_delete": removal}


def s3_needs(actions, prefix):
    # ListBucket is granted on the bucket, for the prefix listed (ListObjectsV2 `prefix`).
    needs = {(a, ("ProjectsBucket", f"/{prefix}*")) for a in actions if a != "s3:ListBucket"}
    if "s3:GetObject" in actions or "s3:ListBucket" in actions:
        needs.add(("s3:ListBucket", ("ProjectsBucket", "", prefix + "*")))
    return needs


def host_source(dirs):
    return "\n".join(
        strip_tests(p.read_text()) for d in dirs for p in sorted((ROOT / d).rglob("*.rs"))
    )


def module_source(module):
    """A tb-pipeline module's source: `<module>.rs`, or every file under `<module>/`."""
    file = PIPELINE_SRC / f"{module}.rs"
    files = [file] if file.exists() else sorted((PIPELINE_SRC / module).rglob("*.rs"))
    return "\n".join(strip_tests(p.read_text()) for p in files)


def unattributed_sends():
    """Queue sends in tb-pipeline modules that are no function's entry module: the check
    could not say which function makes them, so it refuses to pass."""
    entries = {m for modules in ENTRY_MODULES.values() for m in modules}
    found = []
    for path in sorted(PIPELINE_SRC.rglob("*.rs")):
        if Path(path.relative_to(PIPELINE_SRC).parts[0]).stem in entries:
            continue
        text = strip_tests(path.read_text())
        for method in QUEUE_METHODS:
            if re.search(rf"(queue|self)\.{method}\(", text):
                found.append(f"{path.name} calls {method}: name the function that runs it in ENTRY_MODULES")
    return found


def required(template):
    adapters = adapter_needs()
    sqs_send = sdk_calls(AWS_SRC / "queue.rs", SQS)
    consumed = {}
    for res in template["Resources"].values():
        if res.get("Type") == "AWS::Lambda::EventSourceMapping":
            p = res["Properties"]
            consumed.setdefault(ref_name(p["FunctionName"]), set()).add(
                ref_name(p["EventSourceArn"])
            )
    needs, errors = {}, unattributed_sends()
    for name, (logical, dirs) in FUNCTIONS.items():
        code = host_source(dirs)
        need = set()
        for adapter in ["store", "archive"]:
            if f"aws.{adapter}(" in code:
                need |= adapters[adapter]
        modules = "\n".join(module_source(m) for m in sorted(ENTRY_MODULES[name]))
        if "aws.archive(" in code and re.search(r"\.delete_prefix\(", code + modules):
            need |= adapters["archive_delete"]
        if "aws.queue(" in code:
            for module, proof in ENTRY_MODULES[name].items():
                if not re.search(proof, code):
                    errors.append(f"{name}: no call matching {proof!r} shows it runs {module}")
            # The host code itself may send too (e.g. a continuation of its own queue).
            text = code + "\n".join(module_source(m) for m in sorted(ENTRY_MODULES[name]))
            for method, queue in QUEUE_METHODS.items():
                if re.search(rf"\.{method}\(", text):
                    need |= {(a, (queue, "")) for a in sqs_send}
        for queue in consumed.get(logical, ()):
            need |= {(a, (queue, "")) for a in CONSUMER_ACTIONS}
        needs[logical] = need
    return needs, errors


def ref_name(value):
    """The logical id a `!Ref`, `!GetAtt X.Arn` or plain string names."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            return att[0] if isinstance(att, list) else att.split(".")[0]
    return str(value)


def resource_key(value, condition):
    """(logical id, suffix[, prefix condition]) for a statement's resource."""
    if isinstance(value, dict) and "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        m = re.fullmatch(r"\$\{([A-Za-z0-9]+)\.Arn\}(.*)", value["Fn::Sub"])
        if m:
            return (m.group(1), m.group(2))
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        key = (ref_name(value), "")
        prefixes = (condition or {}).get("StringLike", {}).get("s3:prefix")
        if prefixes is None:
            return [key]
        prefixes = prefixes if isinstance(prefixes, list) else [prefixes]
        return [key + (p,) for p in prefixes]
    raise ValueError(f"cannot read resource {value!r}: use !GetAtt X.Arn or !Sub '${{X.Arn}}/...'")


def granted(template):
    grants, errors = {}, []
    for logical, _ in FUNCTIONS.values():
        props = template["Resources"][logical]["Properties"]
        got = set()
        for policy in props.get("Policies", []):
            if not (isinstance(policy, dict) and set(policy) == {"Statement"}):
                errors.append(
                    f"{logical}: policy {policy!r} is not an explicit Statement list "
                    "(SAM policy templates grant more than the code calls)"
                )
                continue
            for st in policy["Statement"]:
                if st.get("Effect") != "Allow":
                    continue
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                for r in resources:
                    try:
                        keys = resource_key(r, st.get("Condition"))
                    except ValueError as e:
                        errors.append(f"{logical}: {e}")
                        continue
                    for key in keys if isinstance(keys, list) else [keys]:
                        got |= {(a, key) for a in actions}
        grants[logical] = got
    return grants, errors


def show(pair):
    action, res = pair
    where = res[0] + res[1] + (f" (prefix {res[2]})" if len(res) > 2 else "")
    return f"{action} on {where}"


def check(template):
    """Every mismatch between what the code calls and what the template grants."""
    needs, errors = required(template)
    grants, grant_errors = granted(template)
    errors += grant_errors
    for logical in needs:
        for pair in sorted(needs[logical] - grants.get(logical, set()), key=str):
            errors.append(f"{logical}: the code calls {show(pair)}, the template does not grant it")
        for pair in sorted(grants.get(logical, set()) - needs[logical], key=str):
            errors.append(f"{logical}: the template grants {show(pair)}, nothing calls it")
    return needs, errors


def self_test(template):
    """The check fails on a template that grants too little, too much, or by policy template."""
    import copy

    def statements(t, logical):
        return t["Resources"][logical]["Properties"]["Policies"][0]["Statement"]

    def sid(t, logical, name):
        return next(st for st in statements(t, logical) if st.get("Sid") == name)

    less = copy.deepcopy(template)
    sends = sid(less, "WorkerFunction", "SendWorkFinalizeAndDeadLetters")
    sends["Resource"] = sends["Resource"][:2]
    more = copy.deepcopy(template)
    objects = sid(more, "FinalizerFunction", "SpillAndProjectObjects")
    objects["Action"] = list(objects["Action"]) + ["s3:DeleteObjectVersion"]
    crud = copy.deepcopy(template)
    crud["Resources"]["ApiFunction"]["Properties"]["Policies"].append(
        {"DynamoDBCrudPolicy": {"TableName": {"Ref": "RequestsTable"}}}
    )
    no_index = copy.deepcopy(template)
    statements(no_index, "ApiFunction")[:] = [
        st for st in statements(no_index, "ApiFunction") if st.get("Sid") != "RequestIndexes"
    ]
    cases = [
        (less, "WorkerFunction: the code calls sqs:SendMessage on WorkDeadLetterQueue"),
        (no_index, "ApiFunction: the code calls dynamodb:Query on RequestsTable/index/*"),
        (more, "FinalizerFunction: the template grants s3:DeleteObjectVersion on ProjectsBucket/projects/*"),
        (crud, "ApiFunction: policy"),
    ]
    for t, expected in cases:
        _, errors = check(t)
        if not any(e.startswith(expected) for e in errors):
            sys.exit(f"check_iam: self-test: expected an error starting {expected!r}, got {errors}")
    print(
        "check_iam: self-test: a missing grant, a missing index grant, an extra grant and a "
        "policy template are caught"
    )


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "template.yaml"
    template = cfn_yaml.load(str(path))
    needs, errors = check(template)
    for logical, need in needs.items():
        print(f"check_iam: {logical}: " + "; ".join(sorted(show(p) for p in need)))
    if not errors:
        self_test(template)
    if errors:
        for e in errors:
            print(f"check_iam: {e}", file=sys.stderr)
        sys.exit(1)
    print("check_iam: every function is granted exactly what its code calls")


if __name__ == "__main__":
    main()
