"""Tests for hack/seed_aws.py and hack/render_example.py: what seeding claims, moto has."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_network_and_ids_written(seeded: dict[str, Any], aws: Any) -> None:
    ec2 = aws("ec2")
    subnet = ec2.describe_subnets(SubnetIds=[seeded["subnetId"]])["Subnets"][0]
    assert subnet["VpcId"] == seeded["vpcId"]
    assert len(seeded["subnetIds"]) == 2
    sg = ec2.describe_security_groups(GroupIds=[seeded["securityGroupId"]])["SecurityGroups"][0]
    assert sg["VpcId"] == seeded["vpcId"]
    cidrs = [r["CidrIp"] for p in sg["IpPermissions"] for r in p["IpRanges"]]
    assert cidrs == ["10.0.0.0/8"], "ingress only from the internal network"
    for key in ("SUBNET_ID", "SECURITY_GROUP_ID", "ECR_REGISTRY", "AMI_ID_NEWER", "AWS_REGION"):
        assert seeded["vars"][key]


def test_tagged_amis_newest_is_the_newer_one(seeded: dict[str, Any], aws: Any) -> None:
    ec2 = aws("ec2")
    tagged = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag:featureenv.io/pipeline", "Values": ["minikube-service"]}]
    )["Images"]
    assert sorted(i["Name"] for i in tagged) == ["minikube-service-2026-11-01", "minikube-service-2026-11-27"]
    newest = max(tagged, key=lambda i: i["CreationDate"])
    assert newest["ImageId"] == seeded["amiIds"]["newer"]
    assert newest["Name"] == "minikube-service-2026-11-27"
    # strictly ordered even at second precision
    dates = sorted(i["CreationDate"] for i in tagged)
    assert dates[0][:19] < dates[1][:19]
    # the unrelated image is the newest image overall but not tagged
    mine = ec2.describe_images(Owners=["self"])["Images"]
    overall = max(mine, key=lambda i: i["CreationDate"])
    assert overall["ImageId"] == seeded["amiIds"]["unrelated"]
    assert "featureenv.io/pipeline" not in {t["Key"] for t in overall.get("Tags", [])}


def test_integration_db_and_snapshots(seeded: dict[str, Any], aws: Any) -> None:
    rds = aws("rds")
    db = rds.describe_db_instances(DBInstanceIdentifier="integration-db")["DBInstances"][0]
    assert db["DBInstanceStatus"] == "available"
    tags = {t["Key"] for t in rds.list_tags_for_resource(ResourceName=db["DBInstanceArn"])["TagList"]}
    assert "featureenv.io/cluster" not in tags, "the integration DB must never look like ours"
    snaps = rds.describe_db_snapshots(DBInstanceIdentifier="integration-db", SnapshotType="manual")["DBSnapshots"]
    by_time = sorted(snaps, key=lambda s: s["SnapshotCreateTime"])
    assert [s["DBSnapshotIdentifier"] for s in by_time] == ["integration-db-2026-11-01", "integration-db-2026-11-27"]
    assert all(s["Status"] == "available" for s in snaps)
    newest_any = max(
        rds.describe_db_snapshots(DBInstanceIdentifier="integration-db")["DBSnapshots"],
        key=lambda s: s["SnapshotCreateTime"],
    )
    assert newest_any["DBSnapshotIdentifier"] == "integration-db-2026-11-27"
    group = rds.describe_db_subnet_groups(DBSubnetGroupName="featureenv")["DBSubnetGroups"][0]
    assert len(group["Subnets"]) == 2


def test_ecr_repositories_and_tags(seeded: dict[str, Any], aws: Any) -> None:
    ecr = aws("ecr")
    for repo in ("payments", "orders", "frontend"):
        images = ecr.describe_images(repositoryName=repo)["imageDetails"]
        tags = sorted(t for i in images for t in i.get("imageTags", []))
        assert tags == ["latest", "pr-123"]
        assert len({i["imageDigest"] for i in images}) == 2
        got = ecr.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "pr-123"}])["images"]
        assert got[0]["imageId"]["imageDigest"] == seeded["ecr"][repo]["digests"]["pr-123"]
        assert seeded["ecr"][repo]["uri"] == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}"


def test_ssm_parameter_and_instance_profile(seeded: dict[str, Any], aws: Any) -> None:
    value = aws("ssm").get_parameter(Name="/featureenv/ami/latest")["Parameter"]["Value"]
    assert value == seeded["amiIds"]["newer"]
    profile = aws("iam").get_instance_profile(InstanceProfileName="featureenv-node")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["featureenv-node"]


def test_examples_render_with_seed_ids(seeded: dict[str, Any]) -> None:
    files = ["examples/featureenvironmentclass.yaml", "examples/rdspool.yaml", "examples/featureenvironment.yaml"]
    out = subprocess.run(
        [sys.executable, "hack/render_example.py", "--seed", seeded["_path"], *files],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    assert not re.search(r"\$\{[A-Z_]+\}", out)
    docs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    cls = docs["FeatureEnvironmentClass"]["spec"]
    assert cls["instance"]["subnetIds"] == [seeded["subnetId"]]
    assert cls["instance"]["securityGroupIds"] == [seeded["securityGroupId"]]
    assert cls["services"][0]["repository"] == seeded["ecr"]["payments"]["uri"]
    assert docs["RdsPool"]["spec"]["vpcSecurityGroupIds"] == [seeded["securityGroupId"]]
    image = docs["FeatureEnvironment"]["spec"]["services"][0]["image"]
    assert image == seeded["ecr"]["payments"]["uri"] + ":pr-123"


def test_render_fails_on_unresolved_placeholder() -> None:
    r = subprocess.run(
        [sys.executable, "hack/render_example.py", "examples/rdspool.yaml"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert "SECURITY_GROUP_ID" in r.stderr
