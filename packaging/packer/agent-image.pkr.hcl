# An Azure image with agent-bootstrap and the agent package baked in. Registration is left to the
# first boot of each VM made from it: a one-shot unit (below) runs `agent-bootstrap install`,
# which finds the package already in the agent dir (no download at boot), registers the agent
# with the VM's managed identity and installs the per-agent boot unit that runs `reconcile` at
# every later boot. The one-shot unit stops running once an agent is registered.
#
# Needs first (packaging/README.md): the VMs made from the image have a managed identity that is
# a user of the organization (Basic) and an Administrator of the pool. The image build itself
# needs no identity and no Azure DevOps access.
#
# agent_version / agent_sha256: from the packages API (with any token that can read the
# organization, e.g. `agent-bootstrap token` on a VM with the identity):
#   curl -s -H "Authorization: Bearer $TOKEN" \
#     "https://dev.azure.com/myorg/_apis/distributedtask/packages/agent?platform=linux-x64&\$top=1"
# (`version` and `hashValue`, the SHA-256 of `downloadUrl`'s file).
#
# Checked here: parsed with python-hcl2 (scripts/check-packaging.sh). Not checked here (no plugin
# downloads on the build machine): `packer init . && packer validate .` in this directory.

packer {
  required_plugins {
    azure = {
      source  = "github.com/hashicorp/azure"
      version = "~> 2"
    }
  }
}

variable "subscription_id" { type = string }
variable "resource_group" { type = string }
variable "location" { type = string }
variable "organization" { type = string }
variable "pool" {
  type    = string
  default = "Default"
}
variable "deb_url" {
  type        = string
  description = "The agent-bootstrap .deb (scripts/package.sh)."
}
variable "deb_sha256" { type = string }
variable "agent_version" { type = string }
variable "agent_sha256" { type = string }

source "azure-arm" "agent" {
  use_azure_cli_auth                = true
  subscription_id                   = var.subscription_id
  managed_image_resource_group_name = var.resource_group
  managed_image_name                = "azure-pipelines-agent-${var.agent_version}"
  location                          = var.location
  os_type                           = "Linux"
  image_publisher                   = "Canonical"
  image_offer                       = "ubuntu-24_04-lts"
  image_sku                         = "server"
  vm_size                           = "Standard_D2s_v5"
}

build {
  sources = ["source.azure-arm.agent"]

  # agent-bootstrap, verified.
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    environment_vars = [
      "DEB_URL=${var.deb_url}",
      "DEB_SHA256=${var.deb_sha256}",
    ]
    inline = [
      "set -eu",
      "curl -fsSL --retry 5 -o /tmp/agent-bootstrap.deb \"$DEB_URL\"",
      "echo \"$DEB_SHA256  /tmp/agent-bootstrap.deb\" | sha256sum -c -",
      "dpkg -i /tmp/agent-bootstrap.deb",
      "rm /tmp/agent-bootstrap.deb",
    ]
  }

  # The agent package, verified, extracted where install looks for it; root's, so install hands
  # it to the agent user as it is.
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    environment_vars = [
      "AGENT_VERSION=${var.agent_version}",
      "AGENT_SHA256=${var.agent_sha256}",
    ]
    inline = [
      "set -eu",
      "url=https://download.agent.dev.azure.com/agent/$AGENT_VERSION/vsts-agent-linux-x64-$AGENT_VERSION.tar.gz",
      "curl -fsSL --retry 5 -o /tmp/agent.tar.gz \"$url\"",
      "echo \"$AGENT_SHA256  /tmp/agent.tar.gz\" | sha256sum -c -",
      "install -d -m 0755 -o root -g root /opt/azure-pipelines-agent",
      "tar -xzf /tmp/agent.tar.gz -C /opt/azure-pipelines-agent --no-same-owner",
      "rm /tmp/agent.tar.gz",
    ]
  }

  # First boot: register. ConditionPathExists stops it once install has saved its settings;
  # from then on install's own boot unit runs `agent-bootstrap reconcile`.
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    environment_vars = [
      "AZP_URL=https://dev.azure.com/${var.organization}",
      "AZP_POOL=${var.pool}",
      "AGENT_VERSION=${var.agent_version}",
    ]
    inline = [
      "set -eu",
      "install -d -m 0755 /etc/agent-bootstrap",
      "printf 'AZP_URL=%s\\nAZP_POOL=%s\\n' \"$AZP_URL\" \"$AZP_POOL\" > /etc/agent-bootstrap/agent.env",
      "cat > /etc/systemd/system/agent-bootstrap-first-boot.service <<UNIT\n[Unit]\nDescription=Register this VM as an Azure Pipelines agent (agent-bootstrap)\nWants=network-online.target\nAfter=network-online.target\nConditionPathExists=!/var/lib/agent-bootstrap/agents\n\n[Service]\nType=oneshot\nEnvironmentFile=/etc/agent-bootstrap/agent.env\nExecStart=/usr/bin/agent-bootstrap install --agent-version $AGENT_VERSION --wait-for-access 15m --log-format json\nTimeoutStartSec=20min\nRestart=on-failure\nRestartSec=60s\n\n[Install]\nWantedBy=multi-user.target\nUNIT",
      "systemctl enable agent-bootstrap-first-boot.service",
      # Generalize: the image must not carry this build VM's identity.
      "/usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync",
    ]
  }
}
