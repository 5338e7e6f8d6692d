"""deploy/cloudformation: lint, no drift from docs/, the AMI the class selects, the shell.

Proves, without an AWS account, what can be proven from the templates themselves:
`cfn-lint` passes (and does catch a defect planted in them); the operator's and the
instance role's policies are exactly docs/iam-policy.json and
docs/instance-profile-policy.json after the same substitutions; every shell step of
every Image Builder component passes `shellcheck`; the service pipeline's AMIs are what
examples/featureenvironmentclass.yaml selects, and the ingress pipeline's are not; the
security group admits only the given CIDRs on the example endpoints' ports; no wildcard
action, and `Resource: "*"` only for actions docs/iam.md justifies; and the commands of
docs/aws-setup.md match the templates and the chart.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import yaml
from cfnlint.api import ManualArgs, lint_file

import helm_python as helm  # a hard dependency: missing it must fail, not skip
from cfnlib import ACCOUNT_ID, REGION, REPO, TEMPLATES, Stack, as_list, load, policy_documents, statements

TEMPLATE_NAMES = ["image-pipelines.yaml", "operator.yaml"]
EXAMPLE_CLASS = yaml.safe_load((REPO / "examples" / "featureenvironmentclass.yaml").read_text())
EXAMPLE_POOL = yaml.safe_load((REPO / "examples" / "rdspool.yaml").read_text())
SETUP_DOC = REPO / "docs" / "aws-setup.md"

OIDC_ARN = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/oidc.eks.{REGION}.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
VPN_CIDRS = ["10.8.0.0/16", "192.168.100.0/24"]
OPERATOR_PARAMETERS = {
    "ClusterId": "prod-eu1",
    "OidcProviderArn": OIDC_ARN,
    "VpcId": "vpc-0123456789abcdef0",
    "AllowedCidrs": ",".join(VPN_CIDRS),
    "DatabaseSubnetIds": "subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb",
}


def operator_stack(**overrides: Any) -> Stack:
    return Stack(load("operator.yaml"), **{**OPERATOR_PARAMETERS, **overrides})


def pipelines_stack(**overrides: Any) -> Stack:
    return Stack(load("image-pipelines.yaml"), **overrides)


def docs_policy(name: str, cluster_id: str, node_role: str) -> dict[str, Any]:
    """docs/<name> with the substitutions docs/iam.md tells an operator to make."""
    text = (REPO / "docs" / name).read_text()
    text = text.replace("CLUSTER_ID", cluster_id).replace("ACCOUNT_ID", ACCOUNT_ID)
    return json.loads(text.replace("featureenv-node", node_role))


# --- cfn-lint -----------------------------------------------------------------------


def lint(path: Path) -> list[str]:
    config = ManualArgs(include_checks=["I"], regions=["us-east-1", REGION])
    return [f"{m.rule.id} {m.message} ({Path(m.filename).name}:{m.linenumber})" for m in lint_file(path, config)]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_cfn_lint_passes_with_informational_checks(name: str) -> None:
    assert lint(TEMPLATES / name) == []


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_cfn_lint_reports_a_defect_planted_in_the_template(name: str, tmp_path: Path) -> None:
    # Proves the linter reads these templates down to the policies (not only the shape).
    broken = (TEMPLATES / name).read_text().replace("Effect: Allow", "Effect: Alow", 1)
    (tmp_path / name).write_text(broken)
    assert any(finding.startswith("E3510 'Alow'") for finding in lint(tmp_path / name)), lint(tmp_path / name)


# --- no drift from docs/ ---------------------------------------------------------------


def test_operator_policy_is_docs_iam_policy() -> None:
    stack = operator_stack(ClusterId="team-b-stage", NodeRoleName="fe-node-team-b")
    (policy,) = stack.properties("OperatorRole")["Policies"]
    assert policy["PolicyDocument"] == docs_policy("iam-policy.json", "team-b-stage", "fe-node-team-b")


def test_instance_role_policy_is_docs_instance_profile_policy() -> None:
    stack = operator_stack(ClusterId="team-b-stage", NodeRoleName="fe-node-team-b")
    (policy,) = stack.properties("NodeRole")["Policies"]
    assert policy["PolicyDocument"] == docs_policy("instance-profile-policy.json", "team-b-stage", "fe-node-team-b")


def test_instance_profile_is_the_one_the_example_class_names_and_the_operator_may_pass() -> None:
    stack = operator_stack()
    name = EXAMPLE_CLASS["spec"]["instance"]["instanceProfile"]
    assert stack.parameters["NodeRoleName"] == name
    assert stack.properties("NodeRole")["RoleName"] == name
    profile = stack.properties("NodeInstanceProfile")
    assert profile == {"InstanceProfileName": name, "Roles": ["{Ref:NodeRole}"]}
    trust = stack.properties("NodeRole")["AssumeRolePolicyDocument"]
    assert statements(trust) == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    (policy,) = stack.properties("OperatorRole")["Policies"]
    passable = {
        r for s in statements(policy["PolicyDocument"]) if "iam:PassRole" in as_list(s["Action"]) for r in as_list(s["Resource"])
    }
    assert passable == {f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"}


def test_inline_policies_fit_iam_size_limits_with_the_longest_names() -> None:
    # IAM counts characters without whitespace: 10,240 for all of a role's inline
    # policies together, 6,144 for a managed policy. iam-policy.json is over the latter.
    stack = operator_stack(ClusterId="c" * 63, NodeRoleName="n" * 64)
    for role in ("OperatorRole", "NodeRole"):
        size = sum(len(json.dumps(p["PolicyDocument"], separators=(",", ":"))) for p in stack.properties(role)["Policies"])
        assert size <= 10_240, f"{role}: {size} characters of inline policy"
    for name, document in policy_documents(pipelines_stack()).items():
        if "/" not in name:  # a managed policy
            assert len(json.dumps(document, separators=(",", ":"))) <= 6_144, name


def test_operator_role_trusts_only_the_charts_service_account_through_irsa() -> None:
    trust = json.loads(operator_stack().properties("OperatorRole")["AssumeRolePolicyDocument"])
    issuer = OIDC_ARN.split(":oidc-provider/", 1)[1]
    assert statements(trust) == [
        {
            "Effect": "Allow",
            "Principal": {"Federated": OIDC_ARN},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{issuer}:sub": "system:serviceaccount:featureenv-system:featureenv-operator",
                    f"{issuer}:aud": "sts.amazonaws.com",
                }
            },
        }
    ]


# --- the AMI the class selects ---------------------------------------------------------


def distribution(stack: Stack, logical_id: str) -> dict[str, Any]:
    (dist,) = stack.properties(logical_id)["Distributions"]
    return dist


def ami_of(stack: Stack, distribution_id: str) -> dict[str, Any]:
    """The AMI a build of that pipeline registers, as DescribeImages shows it to this account."""
    config = distribution(stack, distribution_id)["AmiDistributionConfiguration"]
    name = re.sub(r"\{\{\s*imagebuilder:buildDate\s*\}\}", "2026-12-03T03-14-15.926Z", config["Name"])
    return {"name": name, "tags": config.get("AmiTags", {}), "owner": ACCOUNT_ID}


def selects(term: dict[str, Any], ami: dict[str, Any]) -> bool:
    """One AMI selector term, as the operator queries EC2 (src/cloud/aws/ec2.rs)."""
    unmodelled = set(term) - {"tags", "name", "owner"}
    assert not unmodelled, f"this test does not model selector fields {unmodelled}: extend selects()"
    # A name without an owner searches this account (dereference.rs); tags are visible
    # only to the account that set them, so a tags-only term sees this account's images.
    owner = term.get("owner") or ("self" if "name" in term else None)
    if owner not in (None, "self", ami["owner"]):
        return False
    if "name" in term and not fnmatch.fnmatchcase(ami["name"], term["name"]):
        return False
    for key, value in (term.get("tags") or {}).items():
        if key not in ami["tags"] or value not in ("*", ami["tags"][key]):
            return False
    return True


def test_the_example_class_selects_the_service_pipelines_amis() -> None:
    terms = EXAMPLE_CLASS["spec"]["ami"]["selectorTerms"]
    ami = ami_of(pipelines_stack(), "ServiceDistribution")
    assert any(selects(term, ami) for term in terms), (terms, ami)


def test_the_example_class_never_selects_an_ingress_ami_without_the_services() -> None:
    terms = EXAMPLE_CLASS["spec"]["ami"]["selectorTerms"]
    ami = ami_of(pipelines_stack(), "IngressDistribution")
    assert not any(selects(term, ami) for term in terms), (terms, ami)


def test_selects_is_not_vacuous() -> None:
    ami = {"name": "minikube-service-2026", "tags": {"featureenv.io/pipeline": "minikube-service"}, "owner": ACCOUNT_ID}
    assert selects({"tags": {"featureenv.io/pipeline": "*"}}, ami)
    assert not selects({"tags": {"featureenv.io/pipeline": "minikube-ingress"}}, ami)
    assert not selects({"tags": {"team": "*"}}, ami)
    assert selects({"name": "minikube-service-*"}, ami)
    assert not selects({"name": "minikube-service-*", "owner": "amazon"}, ami)
    assert not selects({"name": "minikube-service-*", "owner": "210987654321"}, ami)


@pytest.mark.parametrize("distribution_id", ["IngressDistribution", "ServiceDistribution"])
def test_amis_stay_in_this_account_and_region(distribution_id: str) -> None:
    # Tag filters see only this account's tags, and a name term without an owner means
    # `self`: the operator finds the AMIs only if the account that builds them owns them.
    dist = distribution(pipelines_stack(), distribution_id)
    assert dist["Region"] == REGION
    assert set(dist) == {"Region", "AmiDistributionConfiguration"}, "no copies, launch templates or sharing"
    assert set(dist["AmiDistributionConfiguration"]) == {"Name", "AmiTags"}, "no TargetAccountIds or LaunchPermission"


def test_the_service_image_bakes_in_the_example_class_services() -> None:
    stack = pipelines_stack()
    services = EXAMPLE_CLASS["spec"]["services"]
    assert stack.parameters["ServiceNames"].split(",") == [s["name"] for s in services]
    assert {s["tag"] for s in services} == {stack.parameters["ServiceImageTag"]}
    assert stack.properties("ServiceConfigNames")["Value"] == "payments,orders,frontend"
    assert stack.properties("ServiceConfigRegistry")["Value"] == f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com"
    other = pipelines_stack(EcrRegistry="210987654321.dkr.ecr.eu-central-1.amazonaws.com")
    assert other.properties("ServiceConfigRegistry")["Value"] == "210987654321.dkr.ecr.eu-central-1.amazonaws.com"


def test_the_ingress_image_starts_from_amazon_linux_2023_and_the_service_image_from_it() -> None:
    stack = pipelines_stack()
    ingress = stack.properties("IngressRecipe")
    service = stack.properties("ServiceRecipe")
    assert ingress["ParentImage"].startswith("ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-")
    assert service["ParentImage"] == f"arn:aws:imagebuilder:{REGION}:{ACCOUNT_ID}:image/{ingress['Name']}/x.x.x"
    assert stack.resource("ServiceRecipe")["DependsOn"] == "IngressFirstImage"
    assert stack.properties("IngressFirstImage")["ImageRecipeArn"] == "{Ref:IngressRecipe}"
    for recipe in (ingress, service):
        assert recipe["AdditionalInstanceConfiguration"] == {"SystemsManagerAgent": {"UninstallAfterBuild": False}}
        (disk,) = recipe["BlockDeviceMappings"]
        assert disk["Ebs"]["VolumeSize"] <= EXAMPLE_CLASS["spec"]["instance"]["rootVolumeGiB"]


@pytest.mark.parametrize("pipeline_id", ["IngressPipeline", "ServicePipeline"])
def test_pipelines_rebuild_daily_and_test_their_images(pipeline_id: str) -> None:
    pipeline = pipelines_stack().properties(pipeline_id)
    assert re.fullmatch(r"cron\(\d{1,2} \d{1,2} \* \* \? \*\)", pipeline["Schedule"]["ScheduleExpression"])
    assert pipeline["Schedule"]["PipelineExecutionStartCondition"] == "EXPRESSION_MATCH_ONLY"
    assert pipeline["ImageTestsConfiguration"]["ImageTestsEnabled"] is True
    assert pipeline["Status"] == "ENABLED"


@pytest.mark.parametrize(("infrastructure_id", "profile_id"), [("IngressInfrastructure", "IngressBuildInstanceProfile"), ("ServiceInfrastructure", "ServiceBuildInstanceProfile")])
def test_build_instances_use_their_own_profile_and_imdsv2(infrastructure_id: str, profile_id: str) -> None:
    default_vpc = pipelines_stack().properties(infrastructure_id)
    assert default_vpc["InstanceProfileName"] == f"{{Ref:{profile_id}}}"
    assert default_vpc["InstanceMetadataOptions"]["HttpTokens"] == "required"
    assert default_vpc["TerminateInstanceOnFailure"] is True
    assert not {"SubnetId", "SecurityGroupIds"} & set(default_vpc)
    own = pipelines_stack(BuildSubnetId="subnet-0123456789abcdef0", BuildSecurityGroupId="sg-0123456789abcdef0")
    placed = own.properties(infrastructure_id)
    assert (placed["SubnetId"], placed["SecurityGroupIds"]) == ("subnet-0123456789abcdef0", ["sg-0123456789abcdef0"])


def test_old_images_outlive_the_longest_environment() -> None:
    stack = pipelines_stack()
    (rule,) = stack.properties("ImageLifecycle")["PolicyDetails"]
    ttl_max = EXAMPLE_CLASS["spec"]["ttl"]["max"]
    assert ttl_max.endswith("h")
    assert rule["Filter"]["Unit"] == "DAYS" and rule["Filter"]["RetainAtLeast"] >= 1
    assert int(rule["Filter"]["Value"]) * 24 > int(ttl_max[:-1])
    assert int(stack.template["Parameters"]["ImageRetentionDays"]["MinValue"]) * 24 > int(ttl_max[:-1])
    recipes = {(r["Name"], r["SemanticVersion"]) for r in stack.properties("ImageLifecycle")["ResourceSelection"]["Recipes"]}
    raw = stack.template["Resources"]
    assert recipes == {
        ("{GetAtt:IngressRecipe.Name}", raw["IngressRecipe"]["Properties"]["Version"]),
        ("{GetAtt:ServiceRecipe.Name}", raw["ServiceRecipe"]["Properties"]["Version"]),
    }


# --- network -----------------------------------------------------------------------------


def endpoint_ports() -> set[int]:
    ports = set()
    for url in EXAMPLE_CLASS["spec"]["endpoints"].values():
        parts = urlsplit(url.replace("{publicIp}", "203.0.113.10"))
        ports.add(parts.port or {"http": 80, "https": 443}[parts.scheme])
    return ports


def test_environments_admit_only_the_given_cidrs_on_the_example_endpoints_ports() -> None:
    stack = operator_stack()
    assert {int(p) for p in stack.parameters["EndpointPorts"]} == endpoint_ports() == {80, 30000, 30001}
    assert "SecurityGroupIngress" not in stack.properties("EnvironmentSecurityGroup")
    rules = {
        (int(p["FromPort"]), int(p["ToPort"]), p["IpProtocol"], p["CidrIp"])
        for logical_id in stack.of_type("AWS::EC2::SecurityGroupIngress")
        for p in [stack.properties(logical_id)]
        if p["GroupId"] == "{Ref:EnvironmentSecurityGroup}"
    }
    assert rules == {(port, port, "tcp", cidr) for port in endpoint_ports() for cidr in VPN_CIDRS}


def test_pool_databases_admit_only_environment_instances() -> None:
    stack = operator_stack(DatabasePort="3306")
    (rule,) = stack.properties("DatabaseSecurityGroup")["SecurityGroupIngress"]
    assert rule["SourceSecurityGroupId"] == "{Ref:EnvironmentSecurityGroup}"
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", "3306", "3306")
    assert not [
        k for k in stack.of_type("AWS::EC2::SecurityGroupIngress") if stack.properties(k)["GroupId"] == "{Ref:DatabaseSecurityGroup}"
    ]
    assert stack.parameters["DatabaseSubnetGroupName"] == EXAMPLE_POOL["spec"]["dbSubnetGroupName"]


def test_the_ingress_image_publishes_exactly_the_endpoints_ports() -> None:
    data = pipelines_stack().properties("IngressComponent")["Data"]
    published = {(int(h), int(c)) for h, c in re.findall(r"--ports=(\d+):(\d+)", data)}
    assert published == {(p, p) for p in endpoint_ports()}
    node_ports = {int(p) for p in re.findall(r"nodePort: (\d+)", data)}
    assert node_ports | {80} == endpoint_ports()  # 80: the ingress controller's hostPort


# --- shell in the components ----------------------------------------------------------------


def component_steps() -> Iterator[tuple[str, str]]:
    """(id, script) for every ExecuteBash step, with AWSTOE's {{ constants }} filled in."""
    for name in TEMPLATE_NAMES:
        stack = Stack(load(name), **(OPERATOR_PARAMETERS if name == "operator.yaml" else {}))
        for logical_id in stack.of_type("AWS::ImageBuilder::Component"):
            document = yaml.safe_load(stack.properties(logical_id)["Data"])
            constants = {k: v["value"] for c in document.get("constants", []) for k, v in c.items()}
            for phase in document["phases"]:
                assert phase["name"] in {"build", "validate", "test"}
                for step in phase["steps"]:
                    assert step["action"] == "ExecuteBash", step["name"]
                    script = "\n".join(step["inputs"]["commands"])
                    script = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: constants[m.group(1)], script)
                    yield f"{logical_id}/{phase['name']}/{step['name']}", script


STEPS = dict(component_steps())


def shellcheck(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which("shellcheck"), "shellcheck is not installed; run `apt-get install shellcheck` (or `make deps`)"
    path = tmp_path / "step.sh"
    path.write_text("#!/bin/bash\n" + script)
    return subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True, check=False
    )


def test_every_component_has_steps() -> None:
    assert {step.split("/")[0] for step in STEPS} == {"IngressComponent", "ServiceComponent"}
    assert len(STEPS) >= 8


@pytest.mark.parametrize("step", sorted(STEPS))
def test_component_step_passes_shellcheck(step: str, tmp_path: Path) -> None:
    script = STEPS[step]
    assert "{{" not in script, "an AWSTOE variable the test does not know"
    first = next(line for line in script.splitlines() if line.strip() and not line.startswith("#"))
    assert first == "set -euo pipefail", "each step is its own script: stop at the first failure"
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    result = shellcheck(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_harness_reports_a_planted_defect(tmp_path: Path) -> None:
    result = shellcheck("set -euo pipefail\nfor f in $(ls /tmp); do rm $f; done\n", tmp_path)
    assert result.returncode != 0 and "SC2045" in result.stdout, result.stdout


def test_the_images_honour_the_bootstrap_contract() -> None:
    ingress = "\n".join(s for k, s in STEPS.items() if k.startswith("IngressComponent/build/"))
    for package in ("docker", "awscli-2", "amazon-ssm-agent", "util-linux"):
        assert re.search(rf"dnf install -y [^\n]*\b{package}\b", ingress), package
    assert "systemctl enable amazon-ssm-agent.service" in ingress
    assert '"force": true' in ingress, "the bootstrap's plain `minikube start` as root needs it"
    assert "minikube addons enable ingress" in ingress
    assert ingress.rstrip().endswith("minikube stop")
    # The test phase starts Minikube on a fresh instance exactly as src/bootstrap.rs does.
    assert "if ! minikube status >/dev/null 2>&1; then\n  minikube start\nfi" in STEPS[
        "IngressComponent/test/StartsLikeTheBootstrap"
    ]
    service = STEPS["ServiceComponent/build/DeployServices"]
    assert re.search(r"^  name: \$\{name\}\n  namespace: default$", service, re.M)
    assert "      containers:\n        - name: ${name}\n          image: ${image}" in service
    assert 'docker logout "$registry"' in service


def test_the_service_build_reads_the_parameters_the_stack_writes() -> None:
    stack = pipelines_stack()
    document = yaml.safe_load(stack.properties("ServiceComponent")["Data"])
    (config_path,) = [c["ConfigPath"]["value"] for c in document["constants"] if "ConfigPath" in c]
    read = set(re.findall(r"^\s*\w+=\"\$\(parameter ([a-z-]+)\)\"", STEPS["ServiceComponent/build/DeployServices"], re.M))
    read |= set(re.findall(re.escape(config_path) + r"/([a-z-]+)", "\n".join(STEPS.values())))
    written = {stack.properties(k)["Name"] for k in stack.of_type("AWS::SSM::Parameter")}
    assert {f"{config_path}/{suffix}" for suffix in read} == written
    (readable,) = [
        s["Resource"] for s in statements(policy_documents(stack)["ServiceBuildRole/pull-microservices"]) if s["Action"] == "ssm:GetParameter"
    ]
    for name in written:
        assert fnmatch.fnmatchcase(f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter{name}", readable)


# --- least privilege ------------------------------------------------------------------------


def actions_of(documents: list[dict[str, Any]]) -> set[str]:
    return {a for d in documents for s in statements(d) for a in as_list(s["Action"])}


def docs_statement(sid: str) -> dict[str, Any]:
    for name in ("iam-policy.json", "instance-profile-policy.json"):
        for statement in json.loads((REPO / "docs" / name).read_text())["Statement"]:
            if statement["Sid"] == sid:
                return statement
    raise KeyError(sid)


def justified_on_any_resource() -> set[str]:
    """Actions docs/*.json grant on "*", each statement's row in docs/iam.md saying why."""
    iam_md = (REPO / "docs" / "iam.md").read_text()
    actions = set()
    for name in ("iam-policy.json", "instance-profile-policy.json"):
        for statement in json.loads((REPO / "docs" / name).read_text())["Statement"]:
            if "*" in as_list(statement["Resource"]):
                row = next(line for line in iam_md.splitlines() if line.startswith(f"| `{statement['Sid']}` |"))
                assert "`*`" in row, row
                actions |= set(statement["Action"])
    return actions


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_no_wildcard_actions_and_star_resources_only_where_docs_justify(name: str) -> None:
    stack = Stack(load(name), **(OPERATOR_PARAMETERS if name == "operator.yaml" else {}))
    allowed_on_star = justified_on_any_resource()
    documents = policy_documents(stack)
    assert documents
    for policy, document in documents.items():
        for statement in statements(document):
            assert statement["Effect"] == "Allow" and not {"NotAction", "NotResource", "Principal"} & set(statement), policy
            wildcards = [a for a in as_list(statement["Action"]) if "*" in a]
            assert not wildcards, f"{policy}: {wildcards}"
            if "*" in as_list(statement["Resource"]):
                assert set(as_list(statement["Action"])) <= allowed_on_star, f"{policy} {statement.get('Sid')}"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_only_the_lifecycle_role_uses_an_aws_managed_policy(name: str) -> None:
    stack = Stack(load(name), **(OPERATOR_PARAMETERS if name == "operator.yaml" else {}))
    managed = {
        (logical_id, arn)
        for logical_id in stack.of_type("AWS::IAM::Role")
        for arn in stack.properties(logical_id).get("ManagedPolicyArns", [])
        if arn.startswith("arn:aws:iam::aws:")
    }
    expected = (
        {("LifecycleRole", "arn:aws:iam::aws:policy/service-role/EC2ImageBuilderLifecycleExecutionPolicy")}
        if name == "image-pipelines.yaml"
        else set()
    )
    assert managed == expected


def test_build_roles_are_managed_nodes_without_parameter_reads_and_only_the_service_build_pulls() -> None:
    stack = pipelines_stack()
    documents = policy_documents(stack)
    shared = documents["ImageBuilderInstancePolicy"]
    (agent,) = [s for s in statements(shared) if s["Sid"] == "SSMAgentManagedNode"]
    assert set(agent["Action"]) == set(docs_statement("SSMAgentManagedNode")["Action"])
    for role in ("IngressBuildRole", "ServiceBuildRole"):
        assert stack.properties(role)["ManagedPolicyArns"] == ["{Ref:ImageBuilderInstancePolicy}"]
    assert not any(a.startswith("ecr:") for a in actions_of([shared]))
    assert "Policies" not in stack.properties("IngressBuildRole")
    pulls = documents["ServiceBuildRole/pull-microservices"]
    ecr = {a for a in actions_of([pulls]) if a.startswith("ecr:")}
    assert ecr == set(docs_statement("ECRLogin")["Action"]) | set(docs_statement("ECRPull")["Action"])
    for document in (shared, pulls):
        for statement in statements(document):
            if "ssm:GetParameter" in as_list(statement["Action"]):
                assert "*" not in as_list(statement["Resource"])


@pytest.mark.parametrize(
    ("registry", "repositories"),
    [
        ("", f"arn:aws:ecr:{REGION}:{ACCOUNT_ID}:repository/*"),
        ("210987654321.dkr.ecr.eu-central-1.amazonaws.com", "arn:aws:ecr:eu-central-1:210987654321:repository/*"),
    ],
)
def test_the_service_build_pulls_only_from_the_one_registry(registry: str, repositories: str) -> None:
    pulls = policy_documents(pipelines_stack(EcrRegistry=registry))["ServiceBuildRole/pull-microservices"]
    (statement,) = [s for s in statements(pulls) if s["Sid"] == "ECRPull"]
    assert statement["Resource"] == repositories


# --- docs/aws-setup.md --------------------------------------------------------------------


def doc_commands() -> list[list[str]]:
    """Every shell command in docs/aws-setup.md's ```sh blocks, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", SETUP_DOC.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line, comments=True))
    return commands


def option_values(argv: list[str], option: str) -> list[str]:
    if option not in argv:
        return []
    values = []
    for arg in argv[argv.index(option) + 1 :]:
        if arg.startswith("--"):
            break
        values.append(arg)
    return values


def deploy_commands() -> dict[str, list[str]]:
    found = {}
    for argv in doc_commands():
        if argv[:3] == ["aws", "cloudformation", "deploy"]:
            (template,) = option_values(argv, "--template-file")
            found[Path(template).name] = argv
    return found


def test_the_setup_doc_deploys_both_templates_with_their_parameters_and_capabilities() -> None:
    commands = deploy_commands()
    assert set(commands) == set(TEMPLATE_NAMES)
    for name, argv in commands.items():
        (template_file,) = option_values(argv, "--template-file")
        assert (REPO / template_file).resolve() == (TEMPLATES / name).resolve()
        template = load(name)
        given = {kv.split("=", 1)[0] for kv in option_values(argv, "--parameter-overrides")}
        declared = template["Parameters"]
        assert given <= set(declared), f"{name}: {given - set(declared)}"
        assert {p for p, spec in declared.items() if "Default" not in spec} <= given, name
        resources = template["Resources"]
        named_iam = any(
            k in r.get("Properties", {})
            for r in resources.values()
            if isinstance(r, dict) and r.get("Type", "").startswith("AWS::IAM::")
            for k in ("RoleName", "InstanceProfileName", "ManagedPolicyName")
        )
        capabilities = set(option_values(argv, "--capabilities"))
        assert ("CAPABILITY_NAMED_IAM" if named_iam else "CAPABILITY_IAM") in capabilities, name
        assert ("CAPABILITY_AUTO_EXPAND" in capabilities) == ("Transform" in template), name


def test_the_setup_doc_follows_the_order() -> None:
    text = SETUP_DOC.read_text()
    steps = [
        "--template-file deploy/cloudformation/image-pipelines.yaml",
        "aws imagebuilder start-image-pipeline-execution",
        "--template-file deploy/cloudformation/operator.yaml",
        "make image",
        "skopeo copy",
        "helm install",
        "examples/featureenvironmentclass.yaml | kubectl apply -f -",
        "examples/rdspool.yaml | kubectl apply -f -",
        "kubectl krew install",
        "kubectl featureenv create",
    ]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)


def test_the_role_trusts_the_service_account_the_documented_helm_install_creates() -> None:
    (argv,) = [a for a in doc_commands() if a[:2] == ["helm", "install"]]
    release, chart_path = argv[2], argv[3]
    (namespace,) = option_values(argv, "--namespace")
    sets = dict(s.split("=", 1) for s in argv if "=" in s and not s.startswith("--"))
    assert sets.keys() >= {"clusterId", "serviceAccount.roleArn"}
    with helm.Chart.load(str(REPO / chart_path)) as chart:
        rendered = chart.render(
            {"clusterId": "prod-eu1", "serviceAccount": {"roleArn": f"arn:aws:iam::{ACCOUNT_ID}:role/featureenv-operator"}},
            name=release,
            namespace=namespace,
            is_install=True,
        )
    accounts = [
        doc
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "ServiceAccount"
    ]
    (account,) = accounts
    overrides = dict(kv.split("=", 1) for kv in option_values(deploy_commands()["operator.yaml"], "--parameter-overrides"))
    stack = operator_stack()
    assert account["metadata"]["name"] == overrides.get("ServiceAccountName", stack.parameters["ServiceAccountName"])
    assert account["metadata"].get("namespace", namespace) == overrides.get(
        "ServiceAccountNamespace", stack.parameters["ServiceAccountNamespace"]
    )
