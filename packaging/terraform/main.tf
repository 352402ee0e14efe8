# A Linux scale set whose instances register themselves as Azure Pipelines agents with one
# user-assigned managed identity: custom_data is a cloud-config (cloud-init.yaml.tftpl) that
# fetches install.sh and the agent-bootstrap release, verifies both, and runs
# `agent-bootstrap install`. No PAT and no secret anywhere in the configuration.
#
# Needs first (packaging/README.md): the identity below is a user of the organization (access
# level Basic) and an Administrator of the pool. Create it with this file, then run the two
# `az rest` commands of packaging/README.md with its principal_id, then scale out.
#
# Checked here: parsed with python-hcl2 and the rendered cloud-config checked with
# `cloud-init schema` (scripts/check-packaging.sh). Not checked here (no provider downloads on
# the build machine): run `terraform init && terraform validate` in this directory.

terraform {
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
  }
}

provider "azurerm" {
  features {}
}

variable "resource_group_name" { type = string }
variable "location" { type = string }
variable "subnet_id" { type = string }
variable "admin_ssh_public_key" { type = string }
variable "organization" { type = string }
variable "pool" {
  type    = string
  default = "Default"
}
variable "install_sh_url" { type = string }
variable "install_sh_sha256" { type = string }
variable "release_url" { type = string }
variable "release_sha256" { type = string }
# 0 at first: grant the identity access (packaging/README.md), then scale out (terraform apply
# -var instances=N, or az vmss scale). An instance that boots before the grant has propagated
# waits for it (install --wait-for-access 30m) instead of exiting 4.
variable "instances" {
  type    = number
  default = 0
}

resource "azurerm_user_assigned_identity" "agents" {
  name                = "agents-mi"
  resource_group_name = var.resource_group_name
  location            = var.location
}

resource "azurerm_linux_virtual_machine_scale_set" "agents" {
  name                = "agents"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = "Standard_D2s_v5"
  instances           = var.instances
  # Overprovisioned extra instances would register as agents and vanish when Azure deletes them.
  overprovision       = false
  admin_username      = "azureuser"
  upgrade_mode        = "Manual"

  admin_ssh_key {
    username   = "azureuser"
    public_key = var.admin_ssh_public_key
  }

  source_image_reference {
    publisher = "Canonical"
    offer     = "ubuntu-24_04-lts"
    sku       = "server"
    version   = "latest"
  }

  os_disk {
    storage_account_type = "Premium_LRS"
    caching              = "ReadWrite"
  }

  network_interface {
    name    = "nic"
    primary = true
    ip_configuration {
      name      = "internal"
      primary   = true
      subnet_id = var.subnet_id
    }
  }

  # Scheduled Events announce a scale-in (Terminate) this long before it happens; the instances'
  # `agent-bootstrap watch` (install --scale-in-drain) drains and unregisters the agent meanwhile.
  termination_notification {
    enabled = true
    timeout = "PT10M"
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.agents.id]
  }

  custom_data = base64encode(templatefile("${path.module}/cloud-init.yaml.tftpl", {
    install_sh_url    = var.install_sh_url
    install_sh_sha256 = var.install_sh_sha256
    release_url       = var.release_url
    release_sha256    = var.release_sha256
    organization      = var.organization
    pool              = var.pool
    client_id         = azurerm_user_assigned_identity.agents.client_id
  }))
}

output "identity_principal_id" {
  description = "Add this object id to the organization and the pool (packaging/README.md)."
  value       = azurerm_user_assigned_identity.agents.principal_id
}
