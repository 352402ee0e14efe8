// Registers an existing VM as an Azure Pipelines agent with agent-bootstrap: the custom-script
// extension runs scripts/install.sh (Linux) or scripts/install.ps1 (Windows, as SYSTEM).
//
// Needs first (packaging/README.md): the VM's managed identity is a user of the organization
// (access level Basic) and an Administrator of the pool.
//
// Not compiled here (there is no Bicep CLI on the build machine). Check it with:
//   az bicep build --file packaging/bicep/custom-script.bicep
// The ARM templates in packaging/arm/ are the same resources and are parsed by
// scripts/check-packaging.sh.

@description('The existing VM to register.')
param vmName string
param location string = resourceGroup().location
@allowed([
  'linux'
  'windows'
])
param os string = 'linux'
@description('Where install.sh (Linux) or install.ps1 (Windows) is published.')
param installScriptUrl string
@description('The agent-bootstrap release: the Linux tarball or the Windows zip.')
param releaseUrl string
@minLength(64)
@maxLength(64)
param releaseSha256 string
param organization string
param pool string = 'Default'
@description('A user-assigned identity\'s client id; empty for the system-assigned identity.')
param identityClientId string = ''

var selector = empty(identityClientId) ? '' : ' --client-id ${identityClientId}'
// Quoted: a SAS URL carries '&', a pool name may hold spaces (the tool refuses quotes in both).
var linuxArgs = '--org \'${organization}\' --pool \'${pool}\'${selector} --log-format json'
var windowsArgs = '--org "${organization}" --pool "${pool}"${selector} --log-format json'

resource vm 'Microsoft.Compute/virtualMachines@2024-07-01' existing = {
  name: vmName
}

resource agentBootstrap 'Microsoft.Compute/virtualMachines/extensions@2024-07-01' = {
  parent: vm
  name: 'agent-bootstrap'
  location: location
  properties: os == 'linux'
    ? {
        publisher: 'Microsoft.Azure.Extensions'
        type: 'CustomScript'
        typeHandlerVersion: '2.1'
        autoUpgradeMinorVersion: true
        protectedSettings: {
          fileUris: [installScriptUrl]
          commandToExecute: 'sh install.sh --release \'${releaseUrl}\' --sha256 ${releaseSha256} -- ${linuxArgs}'
        }
      }
    : {
        publisher: 'Microsoft.Compute'
        type: 'CustomScriptExtension'
        typeHandlerVersion: '1.10'
        autoUpgradeMinorVersion: true
        protectedSettings: {
          fileUris: [installScriptUrl]
          commandToExecute: 'powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File install.ps1 -Url "${releaseUrl}" -Sha256 ${releaseSha256} ${windowsArgs}'
        }
      }
}
