#!/usr/bin/env python3
"""Seed a fresh moto server so it looks like a real account for featureenv-operator.

Owns the local stack's AWS fixture data:
  * a VPC with two subnets (two AZs, for the RDS subnet group) and a security group
    allowing ingress only from the internal network;
  * two AMIs tagged as Image Builder outputs (`featureenv.io/pipeline=minikube-service`):
    `minikube-service-2026-11-01` (older) and `minikube-service-2026-11-27` (newer), plus
    an unrelated, untagged AMI registered last (so it is the newest image overall and a
    selector that ignores tags would pick the wrong one);
  * an integration RDS instance `integration-db` (NOT tagged with the cluster tag: the
    operator must never own it) with an older and a newer manual snapshot, and a DB
    subnet group `featureenv`;
  * ECR repositories `payments`, `orders`, `frontend`, each with images tagged `latest`
    and `pr-123` (distinct manifests, so distinct digests);
  * an SSM parameter `/featureenv/ami/latest` holding the newer AMI id;
  * an IAM role + instance profile `featureenv-node` (moto's RunInstances rejects an
    unknown profile), with docs/instance-profile-policy.json as its inline policy.

moto stamps AMI and snapshot creation times with the wall clock, so "older" is created
first and the script sleeps past a second boundary before creating "newer"; the
ordering is therefore deterministic whatever timestamp precision a client reads.

Writes the generated ids as JSON (--out, default stdout). The JSON has a flat `vars`
map (SUBNET_ID, SECURITY_GROUP_ID, ...) consumed by hack/render_example.py.
Assumes a fresh moto: running it twice creates a second set of resources and fails
on the duplicate RDS instance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from awsenv import DEFAULT_ACCOUNT_ID, client

INSTANCE_PROFILE_POLICY = Path(__file__).resolve().parent.parent / "docs" / "instance-profile-policy.json"
PIPELINE_TAG = ("featureenv.io/pipeline", "minikube-service")
AMI_OLDER = "minikube-service-2026-11-01"
AMI_NEWER = "minikube-service-2026-11-27"
AMI_UNRELATED = "unrelated-base-image-2026-11-30"
INTEGRATION_DB = "integration-db"
SNAPSHOT_OLDER = "integration-db-2026-11-01"
SNAPSHOT_NEWER = "integration-db-2026-11-27"
DB_SUBNET_GROUP = "featureenv"
SERVICES = ("payments", "orders", "frontend")
IMAGE_TAGS = ("latest", "pr-123")
SSM_AMI_PARAMETER = "/featureenv/ami/latest"
SEED_TAG = ("featureenv.io/seed", "dev")
INSTANCE_PROFILE = "featureenv-node"


def _sleep_past_second() -> None:
    """Sleep until just past the next whole second, so second-precision stamps differ."""
    time.sleep((1.0 - (time.time() % 1.0)) + 0.05)


# The layers of every seeded image, bottom first: (name, compressed bytes, what the
# layer's digest depends on). A service image as a Dockerfile usually builds it: a
# distribution base all services share, the language runtime and the dependencies
# (the same for every build of a service while its lockfile does not change), and the
# application's own code, new in every build. 300 MB in all, "an application image
# of a few hundred MB" as the instance timing profile's pull figure assumes
# (docs/local-stack.md); the application's 10 % is an assumption, not a measurement.
# The docker stand-in charges a pull for the layers the instance lacks, so an image
# under test pulled next to its service's baseline downloads only its own code.
IMAGE_LAYERS = (
    ("os", 30_000_000, "shared"),
    ("runtime", 90_000_000, "service"),
    ("dependencies", 150_000_000, "service"),
    ("application", 30_000_000, "build"),
)


def _manifest(repo: str, tag: str) -> str:
    """A Docker v2 schema 2 manifest with the IMAGE_LAYERS of `repo`'s build `tag`."""

    def digest(part: str) -> str:
        return "sha256:" + hashlib.sha256(part.encode()).hexdigest()

    owner = {"shared": "", "service": f"{repo}:", "build": f"{repo}:{tag}:"}
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 1470,
                "digest": digest(f"{repo}:{tag}:config"),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": size,
                    "digest": digest(f"{owner[scope]}{name}"),
                }
                for name, size, scope in IMAGE_LAYERS
            ],
        },
        separators=(",", ":"),
    )


def seed_network(ec2: Any, region: str) -> dict[str, Any]:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": "featureenv-dev"},
                                          {"Key": SEED_TAG[0], "Value": SEED_TAG[1]}])
    subnets = []
    for i, az in enumerate((f"{region}a", f"{region}b")):
        sn = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i + 1}.0/24", AvailabilityZone=az)
        # Environments get a public address (reachable from the office network only,
        # by the security group below), which the example class's URLs use.
        ec2.modify_subnet_attribute(SubnetId=sn["Subnet"]["SubnetId"], MapPublicIpOnLaunch={"Value": True})
        subnets.append(sn["Subnet"]["SubnetId"])
    sg = ec2.create_security_group(
        GroupName="featureenv-environments",
        Description="feature environments: ingress from the internal network only",
        VpcId=vpc,
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=sg,
        IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}],
    )
    return {"vpcId": vpc, "subnetIds": subnets, "securityGroupId": sg}


def _register_ami(ec2: Any, name: str, tagged: bool) -> str:
    ami = ec2.register_image(
        Name=name,
        Description="seeded by hack/seed_aws.py",
        Architecture="x86_64",
        RootDeviceName="/dev/xvda",
        VirtualizationType="hvm",
    )["ImageId"]
    tags = [{"Key": "Name", "Value": name}]
    if tagged:
        tags.append({"Key": PIPELINE_TAG[0], "Value": PIPELINE_TAG[1]})
    ec2.create_tags(Resources=[ami], Tags=tags)
    return str(ami)


def seed_images_and_database(ec2: Any, rds: Any, subnet_ids: list[str], sg: str) -> dict[str, Any]:
    """AMIs and snapshots in three waves a second apart: older, newer, unrelated.

    (moto also makes an automated `rds:integration-db-<date>` snapshot when the
    instance is created; it is older than both manual ones.)
    """
    rds.create_db_subnet_group(
        DBSubnetGroupName=DB_SUBNET_GROUP,
        DBSubnetGroupDescription="feature environment databases",
        SubnetIds=subnet_ids,
    )
    rds.create_db_instance(
        DBInstanceIdentifier=INTEGRATION_DB,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="integration",
        MasterUserPassword="integration-password-not-secret",
        DBSubnetGroupName=DB_SUBNET_GROUP,
        VpcSecurityGroupIds=[sg],
        Tags=[{"Key": "team", "Value": "platform"}],
    )
    amis = {"older": _register_ami(ec2, AMI_OLDER, True)}
    rds.create_db_snapshot(DBSnapshotIdentifier=SNAPSHOT_OLDER, DBInstanceIdentifier=INTEGRATION_DB)
    _sleep_past_second()
    amis["newer"] = _register_ami(ec2, AMI_NEWER, True)
    rds.create_db_snapshot(DBSnapshotIdentifier=SNAPSHOT_NEWER, DBInstanceIdentifier=INTEGRATION_DB)
    _sleep_past_second()
    amis["unrelated"] = _register_ami(ec2, AMI_UNRELATED, False)
    return {
        "amiIds": amis,
        "integrationDb": INTEGRATION_DB,
        "dbSubnetGroupName": DB_SUBNET_GROUP,
        "snapshots": {"older": SNAPSHOT_OLDER, "newer": SNAPSHOT_NEWER},
    }


def seed_ecr(ecr: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for repo in SERVICES:
        uri = ecr.create_repository(repositoryName=repo)["repository"]["repositoryUri"]
        digests: dict[str, str] = {}
        for tag in IMAGE_TAGS:
            image = ecr.put_image(repositoryName=repo, imageManifest=_manifest(repo, tag), imageTag=tag)
            digests[tag] = image["image"]["imageId"]["imageDigest"]
        out[repo] = {"uri": uri, "digests": digests}
    return out


def seed_instance_profile(iam: Any) -> dict[str, str]:
    """The role + instance profile environments run with (RunInstances in moto needs it)."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    role = iam.create_role(RoleName=INSTANCE_PROFILE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    if INSTANCE_PROFILE_POLICY.exists():
        iam.put_role_policy(
            RoleName=INSTANCE_PROFILE,
            PolicyName="featureenv-node",
            PolicyDocument=INSTANCE_PROFILE_POLICY.read_text(encoding="utf-8"),
        )
    profile = iam.create_instance_profile(InstanceProfileName=INSTANCE_PROFILE)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=INSTANCE_PROFILE, RoleName=INSTANCE_PROFILE)
    return {"name": INSTANCE_PROFILE, "arn": profile["Arn"], "roleArn": role["Arn"]}


def seed_ssm(ssm: Any, ami_id: str) -> str:
    ssm.put_parameter(Name=SSM_AMI_PARAMETER, Value=ami_id, Type="String", DataType="aws:ec2:image")
    return SSM_AMI_PARAMETER


def seed(endpoint: str, region: str, cluster_id: str) -> dict[str, Any]:
    ec2 = client("ec2", endpoint, region)
    net = seed_network(ec2, region)
    db = seed_images_and_database(ec2, client("rds", endpoint, region), net["subnetIds"], net["securityGroupId"])
    amis = db["amiIds"]
    repos = seed_ecr(client("ecr", endpoint, region))
    profile = seed_instance_profile(client("iam", endpoint, region))
    param = seed_ssm(client("ssm", endpoint, region), amis["newer"])
    first_uri = repos[SERVICES[0]]["uri"]
    account = first_uri.split(".", 1)[0] if first_uri else DEFAULT_ACCOUNT_ID
    registry = first_uri.split("/", 1)[0]
    result: dict[str, Any] = {
        "endpoint": endpoint,
        "region": region,
        "clusterId": cluster_id,
        "accountId": account,
        "ecrRegistry": registry,
        **net,
        "subnetId": net["subnetIds"][0],
        **db,
        "ecr": repos,
        "ssmAmiParameter": param,
        "instanceProfile": profile,
    }
    result["vars"] = {
        "AWS_REGION": region,
        "AWS_ACCOUNT_ID": account,
        "CLUSTER_ID": cluster_id,
        "ECR_REGISTRY": registry,
        "VPC_ID": net["vpcId"],
        "SUBNET_ID": net["subnetIds"][0],
        "SUBNET_ID_2": net["subnetIds"][1],
        "SECURITY_GROUP_ID": net["securityGroupId"],
        "AMI_ID_OLDER": amis["older"],
        "AMI_ID_NEWER": amis["newer"],
        "AMI_ID_UNRELATED": amis["unrelated"],
        "DB_SUBNET_GROUP": DB_SUBNET_GROUP,
        "INSTANCE_PROFILE": INSTANCE_PROFILE,
        "INSTANCE_PROFILE_ROLE_ARN": profile["roleArn"],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="moto endpoint, e.g. http://127.0.0.1:5000")
    p.add_argument("--region", required=True)
    p.add_argument("--cluster-id", required=True, help="recorded in the output (resources seeded here are not ours)")
    p.add_argument("--out", help="write the ids as JSON here (default: stdout)")
    args = p.parse_args(argv)
    result = seed(args.endpoint, args.region, args.cluster_id)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"seeded {args.endpoint} ({args.region}); ids written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
