#!/usr/bin/env python3
"""Checks rule documents against the CRDs in install/crds, with the
jsonschema library (not our code): every document of a kind a CRD defines
must validate against that CRD's openAPIV3Schema, or must not, as asked.

usage: crd_schemas.py CRD_DIR (accept|refuse) FILE...
Prints one line per document; exits 1 if any document disagrees.
"""
import glob
import sys

import jsonschema
import yaml


def schemas(crd_dir):
    out = {}
    for path in glob.glob(f"{crd_dir}/*.yaml"):
        for crd in yaml.safe_load_all(open(path)):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def main():
    crd_dir, want, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    known = schemas(crd_dir)
    bad = 0
    checked = 0
    for f in files:
        for doc in yaml.safe_load_all(open(f)):
            if not doc:
                continue
            schema = known.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                continue
            checked += 1
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
            name = f"{f}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
            if want == "accept" and errors:
                bad += 1
                print(f"REFUSED {name}: {errors[0].message} at {list(errors[0].absolute_path)}")
            elif want == "refuse" and not errors:
                bad += 1
                print(f"ACCEPTED {name}: the schema should refuse it")
            else:
                why = errors[0].message if errors else "valid"
                print(f"ok {name}: {why}")
    print(f"{checked} documents checked")
    if checked == 0:
        print("no document of a CRD's kind was given")
        bad += 1
    sys.exit(1 if bad else 0)


main()
